"""Captions of the synthetic worlds as claims: a form, its words and its truth.

A `Claim` renders to the caption text and can be checked against any list of
objects: the scene's own (true captions hold by construction) or objects
read off a detector's output (the rule baseline of the learning check).
`hard_negatives` swaps one attribute of a true claim (a colour, a shape, a
size, a side, a count, or the colours of two objects between them) and keeps
the swap only if the result is false in the scene: image-text pairs that
only grounding words in regions can tell apart.

Forms (`WorldConfig.caption_kinds`):
  pair      "a small red cube and a large blue sphere."
  side      "a small red cube on the left."
  count     "there are 2 cubes and a blue sphere."
  relation  "a red cube to the left of a blue sphere."
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from uniter_jax.data.scenes import COLOURS, SHAPES, SIZES, SceneObject

NEGATIVE_KINDS = ("colour", "shape", "size", "side", "count", "binding")


@dataclasses.dataclass(frozen=True)
class Mention:
    """An object named by its shape and, optionally, its colour and size."""

    shape: int
    colour: int | None = None
    size: int | None = None

    @property
    def words(self) -> str:
        parts = [SIZES[self.size]] if self.size is not None else []
        parts += [COLOURS[self.colour]] if self.colour is not None else []
        return " ".join([*parts, SHAPES[self.shape]])

    def matches(self, obj: SceneObject) -> bool:
        return (
            obj.shape == self.shape
            and self.colour in (None, obj.colour)
            and self.size in (None, obj.size)
        )


@dataclasses.dataclass(frozen=True)
class Claim:
    kind: str  # pair | side | count | relation
    mentions: tuple[Mention, ...]
    side: str = ""  # side: "left" | "right"; relation: the first object's side of the second
    count: int = 0  # count: how many objects of mentions[0]'s shape

    @property
    def text(self) -> str:
        a = self.mentions[0]
        if self.kind == "pair":
            return f"a {a.words} and a {self.mentions[1].words}."
        if self.kind == "side":
            return f"a {a.words} on the {self.side}."
        if self.kind == "relation":
            return f"a {a.words} to the {self.side} of a {self.mentions[1].words}."
        verb, noun = ("are", SHAPES[a.shape] + "s") if self.count > 1 else ("is", SHAPES[a.shape])
        return f"there {verb} {self.count} {noun} and a {self.mentions[1].words}."

    def holds(self, objects: Sequence[SceneObject]) -> bool:
        a = self.mentions[0]
        if self.kind == "side":
            return any(a.matches(o) and o.side == self.side for o in objects)
        b = self.mentions[1]
        if self.kind == "count":
            n = sum(o.shape == a.shape for o in objects)
            return n == self.count and any(b.matches(o) for o in objects)
        for i, first in enumerate(objects):
            for j, second in enumerate(objects):
                if i == j or not (a.matches(first) and b.matches(second)):
                    continue
                if self.kind == "pair":
                    return True
                left_of = first.centre < second.centre
                if left_of == (self.side == "left"):
                    return True
        return False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> Claim:
        mentions = tuple(Mention(**m) for m in record["mentions"])
        return cls(record["kind"], mentions, record.get("side", ""), record.get("count", 0))


def describe(kind: str, a: SceneObject, b: SceneObject, objects: Sequence[SceneObject]) -> Claim:
    """The claim of form `kind` about objects `a` and `b` of the scene (true by construction)."""
    full = Mention(a.shape, a.colour, a.size)
    if kind == "pair":
        return Claim("pair", (full, Mention(b.shape, b.colour, b.size)))
    if kind == "side":
        return Claim("side", (full,), side=a.side)
    if kind == "relation":
        side = "left" if a.centre < b.centre else "right"
        return Claim("relation", (Mention(a.shape, a.colour), Mention(b.shape, b.colour)), side)
    n = sum(o.shape == a.shape for o in objects)
    return Claim("count", (Mention(a.shape), Mention(b.shape, b.colour)), count=n)


def captions(
    objects: Sequence[SceneObject],
    rng: np.random.Generator,
    count: int,
    kinds: Sequence[str] = ("pair", "side", "count"),
) -> list[Claim]:
    """`count` true claims about two distinct objects each, forms drawn from `kinds`."""
    out = []
    for _ in range(count):
        a, b = (objects[i] for i in rng.choice(len(objects), 2, replace=False))
        out.append(describe(kinds[rng.integers(len(kinds))], a, b, objects))
    return out


def _replace_mention(claim: Claim, index: int, **change) -> Claim:
    mentions = list(claim.mentions)
    mentions[index] = dataclasses.replace(mentions[index], **change)
    return dataclasses.replace(claim, mentions=tuple(mentions))


def _candidates(claim: Claim, kind: str, max_count: int) -> list[Claim]:
    """Every claim one `kind` of swap away from `claim` (true or not)."""
    out = []
    for i, m in enumerate(claim.mentions):
        if kind == "colour" and m.colour is not None:
            out += [_replace_mention(claim, i, colour=c) for c in range(len(COLOURS))]
        elif kind == "shape" and not (claim.kind == "count" and i == 0):
            out += [_replace_mention(claim, i, shape=s) for s in range(len(SHAPES))]
        elif kind == "size" and m.size is not None:
            out.append(_replace_mention(claim, i, size=1 - m.size))
    if kind == "side" and claim.side:
        out.append(dataclasses.replace(claim, side="right" if claim.side == "left" else "left"))
    if kind == "count" and claim.kind == "count":
        out += [dataclasses.replace(claim, count=n) for n in range(1, max_count + 1)]
    if kind == "binding" and claim.kind in ("pair", "relation"):
        a, b = claim.mentions
        if a.colour != b.colour:
            swapped = (
                dataclasses.replace(a, colour=b.colour),
                dataclasses.replace(b, colour=a.colour),
            )
            out.append(dataclasses.replace(claim, mentions=swapped))
    return [c for c in out if c != claim]


def hard_negatives(
    claim: Claim, objects: Sequence[SceneObject], rng: np.random.Generator, max_count: int
) -> dict[str, Claim]:
    """For each kind of swap that can make `claim` false in the scene, one such
    false claim, drawn at random among them."""
    out = {}
    for kind in NEGATIVE_KINDS:
        false = [c for c in _candidates(claim, kind, max_count) if not c.holds(objects)]
        if false:
            out[kind] = false[rng.integers(len(false))]
    return out
