"""The original's fine-tuned downstream heads <-> ours.

A released fine-tuned checkpoint is the encoder plus one task's head. Most
heads map tensor for tensor (`TABLES`, in `layout`'s kinds); three need a
rewrite of the state dict first (`to_ours` / `to_original`):

- pair-attn NLVR2: each cross-attention keeps its query, key and value
  projections in one `in_proj_weight` `[3H, H]` (and `in_proj_bias`), rows in
  that order; ours keeps three linear layers.
- SNLI-VE: the original orders the classes contradiction, entailment,
  neutral; ours entailment, neutral, contradiction (the converter's LABELS).
- Retrieval: the original scores with `rank_output` (`H -> 1`), started
  from the match row of `itm_output`; ours scores with the ITM head's match
  column. On import the match row of `itm_output` is replaced by
  `rank_output` (the fine-tuned model never reads the former); on export
  `rank_output` is written from it, so our checkpoints round-trip exactly.

The key names, layer orders and class orders are those of the original
repository's `model/vqa.py`, `ve.py`, `nlvr2.py`, `re.py`, `vcr.py` and
`itm.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LINEAR, NORM = "linear", "norm"

# task (variant) -> [(original prefix, our path, kind)].
TABLES: dict[str, list[tuple[str, str, str]]] = {
    "vqa": [
        ("vqa_output.0", "vqa/dense", LINEAR),
        ("vqa_output.2", "vqa/norm", NORM),
        ("vqa_output.3", "vqa/out", LINEAR),
    ],
    "ve": [
        ("vqa_output.0", "ve/dense", LINEAR),
        ("vqa_output.2", "ve/norm", NORM),
        ("vqa_output.3", "ve/out", LINEAR),
    ],
    "nlvr2-pair": [("nlvr2_output", "nlvr2", LINEAR)],
    "nlvr2-triplet": [("nlvr2_output", "nlvr2", LINEAR)],
    "nlvr2-pair-attn": [
        *(
            (f"{attn}.{part}", f"nlvr2/{ours}/{path}", LINEAR)
            for attn, ours in (("attn1", "left_to_right"), ("attn2", "right_to_left"))
            for part, path in (
                ("q_proj", "query"),
                ("k_proj", "key"),
                ("v_proj", "value"),
                ("out_proj", "out"),
            )
        ),
        ("fc.0", "nlvr2/fuse", LINEAR),
        ("attn_pool.fc.0", "nlvr2/pool/score", LINEAR),
        ("nlvr2_output", "nlvr2/out", LINEAR),
    ],
    "refexp": [("re_output", "refexp/out", LINEAR)],
    "vcr": [
        ("vcr_output.0", "vcr/dense", LINEAR),
        ("vcr_output.2", "vcr/norm", NORM),
        ("vcr_output.3", "vcr/out", LINEAR),
    ],
    "retrieval": [],  # the ITM head, already in the pretraining table
}
# Our SNLI-VE class k is the original's class VE_ORDER[k].
VE_ORDER = (1, 2, 0)
# Keys of the original that say which head a file holds, most specific first.
_MARKERS = (
    ("rank_output.weight", "retrieval"),
    ("attn1.in_proj_weight", "nlvr2-pair-attn"),
    ("re_output.weight", "refexp"),
    ("re_output.0.weight", "refexp-mlp2"),
    ("vcr_output.0.weight", "vcr"),
)


def detect(state: Mapping[str, np.ndarray], hidden: int) -> str | None:
    """The downstream head an original state dict holds (a key of TABLES), or
    None for a pretraining (or BERT) file. `vqa_output` with 3 classes is
    read as SNLI-VE; an unsupported head is a ValueError naming it."""
    for key, task in _MARKERS:
        if key in state:
            if task == "refexp-mlp2":
                raise ValueError(
                    "re_output.0.weight: a referring-expression head with a hidden layer "
                    "(the original's --mlp 2); only the linear head (--mlp 1) is supported"
                )
            return task
    if "nlvr2_output.weight" in state:
        width = state["nlvr2_output.weight"].shape[-1]
        return "nlvr2-pair" if width == 2 * hidden else "nlvr2-triplet"
    if "vqa_output.3.weight" in state:
        return "ve" if state["vqa_output.3.weight"].shape[0] == 3 else "vqa"
    return None


def task_of(params: dict, hidden: int) -> str | None:
    """The fine-tuned head a parameter tree of ours holds (a key of TABLES), or
    None; a tree with an ITM head and nothing else of pretraining is retrieval."""
    groups = set(params)
    for task in ("vqa", "ve", "refexp", "vcr"):
        if task in groups:
            return task
    if "nlvr2" in groups:
        head = params["nlvr2"]
        if "left_to_right" in head:
            return "nlvr2-pair-attn"
        width = np.shape(head["kernel"])[0]
        return "nlvr2-pair" if width == 2 * hidden else "nlvr2-triplet"
    if "itm" in groups and not groups & {"mlm", "mrfr", "mrc"}:
        return "retrieval"
    return None


def to_ours(state: dict[str, np.ndarray], task: str | None) -> dict[str, np.ndarray]:
    """Rewrites an original state dict so that `TABLES[task]` reads it."""
    state = dict(state)
    if task == "nlvr2-pair-attn":
        for attn in ("attn1", "attn2"):
            for suffix in ("weight", "bias"):
                joined = state.pop(f"{attn}.in_proj_{suffix}", None)
                if joined is None:
                    continue
                pieces = np.split(joined, 3)  # query, key, value rows
                for part, piece in zip(("q_proj", "k_proj", "v_proj"), pieces, strict=True):
                    state[f"{attn}.{part}.{suffix}"] = piece
    elif task == "ve":
        for suffix in ("weight", "bias"):
            key = f"vqa_output.3.{suffix}"
            if key in state:
                state[key] = state[key][list(VE_ORDER)]
    elif task == "retrieval" and "itm_output.weight" in state:
        for suffix in ("weight", "bias"):
            rank = state.pop(f"rank_output.{suffix}")
            itm = np.array(state[f"itm_output.{suffix}"])
            itm[1] = rank[0]
            state[f"itm_output.{suffix}"] = itm
    return state


def to_original(state: dict[str, np.ndarray], task: str | None) -> dict[str, np.ndarray]:
    """The inverse of `to_ours`: our table's keys -> the original's file."""
    state = dict(state)
    if task == "nlvr2-pair-attn":
        for attn in ("attn1", "attn2"):
            for suffix in ("weight", "bias"):
                parts = [state.pop(f"{attn}.{p}.{suffix}") for p in ("q_proj", "k_proj", "v_proj")]
                state[f"{attn}.in_proj_{suffix}"] = np.concatenate(parts)
    elif task == "ve":
        inverse = np.argsort(VE_ORDER)
        for suffix in ("weight", "bias"):
            key = f"vqa_output.3.{suffix}"
            state[key] = state[key][inverse]
    elif task == "retrieval":
        for suffix in ("weight", "bias"):
            state[f"rank_output.{suffix}"] = state[f"itm_output.{suffix}"][1:].copy()
    return state
