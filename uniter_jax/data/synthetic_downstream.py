"""The synthetic world's NLVR2, VCR and retrieval files, in their public layouts.

Written by `synthetic.write_world` next to captions, VQA, SNLI-VE and
referring expressions, from the same scenes, and converted by the same
converters users run. Each template asks something the regions answer:
  NLVR2      statements about a pair of scenes (left image contents, shapes
             in both, which side has more of a shape), about half true;
  VCR        "what colour is [k]?" with four colour answers and four
             rationales naming the object's colour and size;
  retrieval  Karpathy-split JSON of the scenes' captions.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from uniter_jax.data import scenes as world


@dataclasses.dataclass(frozen=True)
class Scene:
    image_id: str
    objects: list
    split: str


def nlvr2_lines(
    scenes: list[Scene], split: str, pairs: int, per_pair: int, rng: np.random.Generator
) -> tuple[list[str], list[tuple[str, str]]]:
    """NLVR2 JSON lines, `per_pair` statements on each of `pairs` random pairs of
    the split's scenes, and the `(nlvr2 image name, scene image id)` pairs
    whose regions the NLVR2 images copy (statements of a pair share them, as
    NLVR2's sentences of one image pair do)."""
    pool = [s for s in scenes if s.split == split]
    lines, copies = [], []
    for n in range(pairs):
        # Two different scenes, unless the split has only one (tiny test worlds).
        left, right = (pool[k] for k in rng.choice(len(pool), 2, replace=len(pool) < 2))
        for sentence in range(per_pair):
            statement, truth = _pair_statement(left.objects, right.objects, rng)
            record = {"identifier": f"{split}-{n}-0-{sentence}", "sentence": statement}
            lines.append(json.dumps({**record, "label": str(truth)}))
        copies += [(f"{split}-{n}-0-img0", left.image_id), (f"{split}-{n}-0-img1", right.image_id)]
    return lines, copies


def _pair_statement(left: list, right: list, rng: np.random.Generator) -> tuple[str, bool]:
    kind = rng.integers(3)
    if kind == 0:
        if rng.random() < 0.5:
            obj = left[rng.integers(len(left))]
            shape, colour = obj.shape, obj.colour
        else:
            shape, colour = (
                int(rng.integers(len(world.SHAPES))),
                int(rng.integers(len(world.COLOURS))),
            )
        truth = any(o.shape == shape and o.colour == colour for o in left)
        return f"the left image contains a {world.COLOURS[colour]} {world.SHAPES[shape]}.", truth
    if kind == 1:
        shape = (left + right)[rng.integers(len(left) + len(right))].shape
        truth = any(o.shape == shape for o in left) and any(o.shape == shape for o in right)
        return f"both images contain a {world.SHAPES[shape]}.", truth
    shape = (left + right)[rng.integers(len(left) + len(right))].shape
    count = lambda objects: sum(o.shape == shape for o in objects)
    truth = count(left) > count(right)
    return f"the left image has more {world.SHAPES[shape]}s than the right image.", truth


def vcr_lines(scenes: list[Scene], split: str, rng: np.random.Generator) -> list[str]:
    """One VCR question per scene of the split whose shapes include a unique one."""
    lines = []
    for scene in (s for s in scenes if s.split == split):
        objects = scene.objects
        unique = [k for k, o in enumerate(objects) if sum(p.shape == o.shape for p in objects) == 1]
        if not unique:
            continue
        k = unique[rng.integers(len(unique))]
        obj = objects[k]
        wrong = [c for c in range(len(world.COLOURS)) if c != obj.colour]
        colours = [obj.colour, *rng.choice(wrong, 3, replace=False)]
        answer_order = rng.permutation(4)
        answers = [["it", "is", world.COLOURS[int(colours[j])], "."] for j in answer_order]
        # Rationales: the true colour and size, the true colour with the other
        # size, and two wrong colours.
        facts = [
            (obj.colour, obj.size),
            (obj.colour, 1 - obj.size),
            (int(colours[1]), obj.size),
            (int(colours[2]), 1 - obj.size),
        ]
        rationale_order = rng.permutation(4)
        rationales = [
            ["because", [k], "is", world.COLOURS[facts[j][0]], "and", world.SIZES[facts[j][1]], "."]
            for j in rationale_order
        ]
        lines.append(
            json.dumps(
                {
                    "annot_id": f"{split}-{scene.image_id}",
                    "img_fn": f"vcr1images/synth/{scene.image_id}.jpg",
                    "objects": [world.SHAPES[o.shape] for o in objects],
                    "question": ["what", "colour", "is", [k], "?"],
                    "answer_choices": answers,
                    "rationale_choices": rationales,
                    "answer_label": int(np.argmax(answer_order == 0)),
                    "rationale_label": int(np.argmax(rationale_order == 0)),
                }
            )
        )
    return lines


def karpathy(scenes: list[Scene], captions: dict[str, list[str]]) -> dict:
    """Karpathy-split JSON (Flickr30K layout) of the scenes and their captions."""
    images, sentid = [], 0
    for imgid, scene in enumerate(scenes):
        sentences = []
        for text in captions[scene.image_id]:
            sentences.append(
                {"raw": text, "tokens": text.split(), "sentid": sentid, "imgid": imgid}
            )
            sentid += 1
        images.append(
            {
                "filename": f"{scene.image_id}.jpg",
                "imgid": imgid,
                "split": scene.split,
                "sentences": sentences,
            }
        )
    return {"images": images, "dataset": "flickr30k"}
