"""The synthetic world's annotations of each scene, gathered in public layouts.

Scene by scene, `Annotations.add` draws an image's captions
(`uniter_jax.data.claims`), VQA questions, SNLI-VE statements and referring
expressions from templates over its objects, and keeps them as the public
files hold them: COCO caption JSON, VQA v2 questions and annotations, SNLI-VE
JSON lines and the refer toolkit's refs and instances. Validation captions
also get their hard negatives. `synthetic.write_world` writes the files and
converts them.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from uniter_jax.data.claims import captions, hard_negatives
from uniter_jax.data.scenes import (
    COLOURS,
    HEIGHT,
    SHAPES,
    SIZES,
    WIDTH,
    SceneObject,
    WorldConfig,
    class_label,
)
from uniter_jax.data.synthetic_downstream import Scene

SPLITS = ("train", "val")
NEUTRAL_WORDS = ("heavy", "new", "old", "wet")  # what the pixels cannot tell


def questions(
    objects: list[SceneObject], rng: np.random.Generator, count: int
) -> list[tuple[str, str]]:
    """(question, answer) pairs: colour, count and existence questions."""
    out = []
    for _ in range(count):
        obj = objects[rng.integers(len(objects))]
        kind = rng.integers(3)
        if kind == 0:
            out.append(
                (f"what colour is the {SIZES[obj.size]} {SHAPES[obj.shape]}?", COLOURS[obj.colour])
            )
        elif kind == 1:
            n = sum(o.shape == obj.shape for o in objects)
            out.append((f"how many {SHAPES[obj.shape]}s are there?", str(n)))
        else:
            colour = int(rng.integers(len(COLOURS)))
            present = any(o.shape == obj.shape and o.colour == colour for o in objects)
            out.append(
                (f"is there a {COLOURS[colour]} {SHAPES[obj.shape]}?", "yes" if present else "no")
            )
    return out


def entailment(
    objects: list[SceneObject], rng: np.random.Generator, count: int
) -> list[tuple[str, str]]:
    """(statement, SNLI-VE label): entailed by a present object, contradicted by an
    absent (shape, colour), or neutral (an attribute the picture cannot show)."""
    present = {(o.shape, o.colour) for o in objects}
    absent = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    absent = [sc for sc in absent if sc not in present]
    out = []
    for _ in range(count):
        kind = rng.integers(3)
        obj = objects[rng.integers(len(objects))]
        if kind == 0:
            out.append(
                (f"a {COLOURS[obj.colour]} {SHAPES[obj.shape]} is in the picture.", "entailment")
            )
        elif kind == 1:
            shape, colour = absent[rng.integers(len(absent))]
            out.append((f"a {COLOURS[colour]} {SHAPES[shape]} is in the picture.", "contradiction"))
        else:
            word = NEUTRAL_WORDS[rng.integers(len(NEUTRAL_WORDS))]
            out.append((f"the {COLOURS[obj.colour]} {SHAPES[obj.shape]} is {word}.", "neutral"))
    return out


def referring(objects: list[SceneObject]) -> list[tuple[str, int]]:
    """(expression, region index) for each object its words single out."""
    out = []
    for i, obj in enumerate(objects):
        if sum(o.words == obj.words for o in objects) == 1:
            out.append((f"the {obj.words}", i))
    return out


def hard_negative_lines(
    image_id: str, objects: list[SceneObject], claims: list, config: WorldConfig
) -> list[str]:
    """JSON lines pairing each true caption of an image with its hard negatives,
    one per kind of swap: `{image_id, kind, text, negative, claim, negative_claim}`."""
    rng = np.random.default_rng([config.seed, 7, int(image_id.removeprefix("synth"))])
    lines = []
    for claim in claims:
        for kind, negative in hard_negatives(claim, objects, rng, config.max_objects).items():
            record = {"image_id": image_id, "kind": kind, "text": claim.text}
            record |= {"negative": negative.text, "claim": claim.to_json()}
            lines.append(json.dumps({**record, "negative_claim": negative.to_json()}))
    return lines


def _by_split() -> dict[str, list]:
    return {split: [] for split in SPLITS}


@dataclasses.dataclass
class Annotations:
    """Every scene's annotations so far, numbered across splits as the files number them."""

    config: WorldConfig
    scenes: list[Scene] = dataclasses.field(default_factory=list)
    captions_of: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # by image id
    coco: dict[str, dict[str, list]] = dataclasses.field(
        default_factory=lambda: {split: {"images": [], "annotations": []} for split in SPLITS}
    )
    vqa_questions: dict[str, list[dict]] = dataclasses.field(default_factory=_by_split)
    vqa_answers: dict[str, list[dict]] = dataclasses.field(default_factory=_by_split)
    # SNLI-VE, one JSON object a line.
    ve_lines: dict[str, list[str]] = dataclasses.field(default_factory=_by_split)
    # The refer toolkit's layout: refs and the COCO-style instances they point into.
    refs: list[dict] = dataclasses.field(default_factory=list)
    instances: dict[str, list] = dataclasses.field(
        default_factory=lambda: {"images": [], "annotations": [], "categories": []}
    )
    hard: list[str] = dataclasses.field(default_factory=list)  # hard_negative_lines of val

    def add(self, i: int, image_id: str, objects: list[SceneObject], split: str) -> None:
        """The annotations of image `i` (`image_id`, in `split`) of the world."""
        config = self.config
        self.scenes.append(Scene(image_id, objects, split))
        self.coco[split]["images"].append({"id": i, "width": WIDTH, "height": HEIGHT})
        # One stream per image, drawn in this order: captions, questions, statements.
        rng = np.random.default_rng([config.seed, 3, i])
        claims = captions(objects, rng, config.captions_per_image, config.caption_kinds)
        self.captions_of[image_id] = [claim.text for claim in claims]
        if split == "val":
            self.hard += hard_negative_lines(image_id, objects, claims, config)
        for text in self.captions_of[image_id]:
            n = sum(len(coco["annotations"]) for coco in self.coco.values())
            self.coco[split]["annotations"].append({"id": n, "image_id": i, "caption": text})
        for question, answer in questions(objects, rng, config.questions_per_image):
            self._add_question(i, split, question, answer)
        for statement, label in entailment(objects, rng, config.statements_per_image):
            n = sum(map(len, self.ve_lines.values()))
            record = {
                "pairID": f"ve{n}",
                "Flikr30kID": f"{image_id}.jpg",
                "sentence2": statement,
                "gold_label": label,
            }
            self.ve_lines[split].append(json.dumps(record))
        self._add_referring(i, image_id, objects, split)

    def _add_question(self, i: int, split: str, question: str, answer: str) -> None:
        """A VQA v2 question, with ten humans all giving `answer`."""
        n = sum(map(len, self.vqa_questions.values()))
        self.vqa_questions[split].append({"question_id": n, "image_id": i, "question": question})
        self.vqa_answers[split].append(
            {
                "question_id": n,
                "image_id": i,
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_id": k} for k in range(10)],
            }
        )

    def _add_referring(self, i: int, image_id: str, objects: list[SceneObject], split: str) -> None:
        """One instance annotation per object (its true box), one ref per object
        its words single out."""
        self.instances["images"].append({"id": i, "width": WIDTH, "height": HEIGHT})
        first_ann = len(self.instances["annotations"])
        for k, obj in enumerate(objects):
            x1, y1, x2, y2 = obj.box
            self.instances["annotations"].append(
                {
                    "id": first_ann + k,
                    "image_id": i,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "category_id": class_label(obj),
                }
            )
        for expression, index in referring(objects):
            ref_id = len(self.refs)
            sentence = {
                "sent": expression,
                "raw": expression,
                "tokens": expression.split(),
                "sent_id": ref_id,
            }
            self.refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": first_ann + index,
                    "image_id": i,
                    "split": split,
                    "category_id": class_label(objects[index]),
                    "file_name": f"{image_id}.jpg",
                    "sent_ids": [ref_id],
                    "sentences": [sentence],
                }
            )
