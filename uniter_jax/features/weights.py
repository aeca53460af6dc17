"""Loading the published bottom-up-attention weights into `Detector`.

    detector, config, info = load_detector("bua-caffe-frcn-r101_with_attributes.pth")

Three files, two layouts (`detector.py`'s docstring has the key table):

- bua: bottom-up-attention.pytorch's caffe-mode `.pth` (`bua-caffe-frcn-r101-k10-100.pth`,
  `-k36`, `_with_attributes`), a `torch.save`d dict with the state dict under
  `"model"`; Caffe names and order (2-way RPN objectness, background first).
- d2: py-bottom-up-attention's `.pkl` (`faster_rcnn_from_caffe_attr.pkl`; without
  attributes `faster_rcnn_from_caffe.pkl`), detectron2's pickle
  `{"model": {name: ndarray}, "__author__": ...}`; detectron2 names and order
  (one objectness logit per anchor, background last, no background box rows).
- HuggingFace's LXMERT demo FRCNN, `unc-nlp/frcnn-vg-finetuned/pytorch_model.bin`:
  the d2 layout with the same names and no prefix. transformers
  `examples/research_projects/lxmert/modeling_frcnn.py` builds `GeneralizedRCNN`
  with children `backbone` (`stem`, `res2`..`res4`), `proposal_generator`
  (`rpn_head.{conv, objectness_logits [A], anchor_deltas}`, `anchor_generator`)
  and `roi_heads` (`res5`, `box_predictor.{cls_score [C + 1], bbox_pred [4 C],
  cls_embedding, fc_attr, attr_score [num_attrs + 1]}`), and loads the file
  with a strict `load_state_dict`; its `do_nms` drops the last class and its
  `_predict_attrs` the last attribute (background / "no attribute" last). Its
  norms are torch `BatchNorm2d` (`get_norm` has no FrozenBN), so the file also
  holds `num_batches_tracked`, which we drop.

The layout is read from the RPN head (objectness rows: `2 A` in bua, `A` in
d2, against `4 A` delta rows). Unless a config is given, the architecture is
read from the shapes (widths, blocks per stage, anchors per cell, classes,
attributes, and whether the attribute head exists at all). A key that is
missing, unexpected or misshapen fails the load with all of them listed.
Norms with only `weight` and `bias` (Caffe2-converted) get identity
statistics, as `detector.py` says.

Anchors. Each checkpoint's RPN was trained with particular cell anchors, in the
order of its channels (`DetectorConfig.anchors`, `cell_anchors()`):

- bua -> "caffe". bottom-up-attention.pytorch has no anchor generator of its
  own: `bua/caffe/modeling/rpn.py` calls detectron2's `build_anchor_generator`,
  and `configs/caffe/test-caffe-r101.yaml` sets `ANCHOR_GENERATOR.SIZES
  [[4, 8, 16, 32]]`, the Caffe *scales* (`generate_anchors.py`, base 16), not
  sizes in pixels. The pinned detectron2 (v0.2.1, `be792b9`,
  `modeling/anchor_generator.py`) would make 4..32 px anchors from that, size-
  major; but its `BufferList` registers the cell anchors as persistent
  buffers, so `proposal_generator.anchor_generator.cell_anchors.0` is in the
  model's state dict and a checkpoint that carries it replaces them on load.
  The RPN weights are Caffe's, unpermuted (`StandardBUARPNHead` keeps the
  2-way `[bg x A, fg x A]` channels), the grid starts at offset 0
  (`ANCHOR_GENERATOR.OFFSET` 0.0 in v0.2.1's defaults) and boxes decode with
  the Caffe `+ 1` (`box_regression.py`): the anchors those weights need are
  Caffe's 64..512 px, ratio-major, centred on 7.5 (`boxes.caffe_cell_anchors`).
- d2 -> "detectron2". py-bottom-up-attention's
  `configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml` sets
  `SIZES [[64, 128, 256, 512]]`, ratios default `[[0.5, 1.0, 2.0]]` and
  `OFFSET` 0.0 (`detectron2/config/defaults.py`); its
  `detectron2/modeling/anchor_generator.py` makes exact `sqrt(size^2 / ratio)`
  sides centred on 0, size-major (`boxes.detectron2_cell_anchors`). Its author
  notes (py-bottom-up-attention issue #1) that these differ from the Caffe
  anchors on purpose ("the anchors in butd are wrongly shifted ... I fixed
  this bug"). HF's `AnchorGenerator` is the same generator, but keeps the
  cell anchors in an `nn.ParameterList`: `cell_anchors.0` `[12, 4]` is in its
  `pytorch_model.bin` and is what it decodes from.

When a checkpoint carries `proposal_generator.anchor_generator.cell_anchors.0`,
those are the anchors the port runs with: the loader matches them against both
generators and fails if neither fits. Without them, the layout decides.

The d2 ports also decode and clip without the Caffe `+ 1` (detectron2's
`Box2BoxTransform`, HF's `_clip_box` to `[0, w]`): a detector built from a d2
file carries `box_convention = "detectron2"` (its anchors' kind), and its
proposals follow `boxes.DETECTRON2`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniter_jax.data.errors import DataError
from uniter_jax.features.checkpoint_file import read_checkpoint
from uniter_jax.features.detector import Detector
from uniter_jax.features.detector_config import ANCHOR_KINDS, STAGE_BLOCKS, DetectorConfig

BUA, D2 = "bua", "d2"
ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
_RPN = "proposal_generator.rpn_head."
_PREDICTOR = "roi_heads.box_predictor."
# Our names for the attribute head -> bua's (`BUACaffeFastRCNNOutputLayers`).
_BUA_ATTRIBUTE_NAMES = {
    "cls_embedding.embedding": "cls_embed.weight",
    "fc_attr.": "attr_linear1.",
    "attr_score.": "attr_linear2.",
}
_ATTRIBUTE_KEYS = {
    BUA: ("cls_embed.weight", "attr_linear1.weight", "attr_linear2.weight"),
    D2: ("cls_embedding.weight", "fc_attr.weight", "attr_score.weight"),
}
_LISTED = 20  # keys shown per kind of problem


class LoadInfo(NamedTuple):
    """What `load_detector` found in the file."""

    layout: str  # "bua" or "d2" (HF's pytorch_model.bin is d2)
    file_format: str  # "torch" (.pth / .bin / .safetensors) or "pickle" (detectron2 .pkl)
    anchors_stored: bool  # the file carried its cell anchors (config.anchors was matched to them)
    running_stats: bool  # every norm had running_mean / running_var (else identity for some)
    ignored: tuple[str, ...]  # keys read and not needed (num_batches_tracked, stored anchors)
    author: str | None  # a detectron2 pickle's "__author__"


def load_detector(
    path: str | os.PathLike, config: DetectorConfig | None = None
) -> tuple[Detector, DetectorConfig, LoadInfo]:
    """Reads a bua `.pth`, a detectron2 `.pkl` or HF's `pytorch_model.bin` into a
    `Detector` (built abstract, then every variable set: no random init).

    `config`: the architecture to load into (its `dtype` applies); None reads it
    from the checkpoint. Either way `anchors` is set from the checkpoint (module
    doc). Raises `DataError` naming the file for an unreadable or refused file
    and for missing, unexpected or misshapen keys.
    """
    path = os.fspath(path)
    state, file_format, author = read_checkpoint(path)
    layout = detect_layout(state, path)
    if config is None:
        config = infer_config(state, layout, path)
    stored = state.get(ANCHORS_KEY)
    config = dataclasses.replace(config, anchors=_anchor_kind(stored, layout, config, path))
    model = nnx.eval_shape(lambda: Detector(config, nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model))
    names = [".".join(map(str, path_)) for path_, _ in flat]
    sources = {
        name: _source(name, variable.shape, layout)
        for name, (_, variable) in zip(names, flat, strict=True)
    }
    values, running_stats = _gather(state, sources, layout, config.batch_norm_eps, path)
    for name, (_, variable) in zip(names, flat, strict=True):
        variable.set_value(jnp.asarray(values[name]))
    nnx.update(model, nnx.from_flat_state(flat))
    ignored = tuple(sorted(k for k in state if _ignorable(k)))
    info = LoadInfo(layout, file_format, stored is not None, running_stats, ignored, author)
    return model, config, info


# ------------------------------------------------------- layout and config


def detect_layout(state: Mapping[str, np.ndarray], path: str = "") -> str:
    """The layout, from the RPN head: `BUA` (2 objectness rows per anchor) or `D2` (one)."""
    logits = state.get(_RPN + "objectness_logits.weight")
    deltas = state.get(_RPN + "anchor_deltas.weight")
    if logits is None or deltas is None:
        raise DataError(
            f"no RPN head ({_RPN}objectness_logits / anchor_deltas): not a "
            f"bottom-up-attention detector; its keys start {_listing(sorted(state))}",
            file=path or None,
        )
    if 2 * logits.shape[0] == deltas.shape[0]:
        return BUA
    if 4 * logits.shape[0] == deltas.shape[0]:
        return D2
    raise DataError(
        f"cannot tell the layout: {logits.shape[0]} objectness rows for "
        f"{deltas.shape[0]} anchor-delta rows (bua: 2 A for 4 A, d2: A for 4 A)",
        file=path or None,
    )


def infer_config(state: Mapping[str, np.ndarray], layout: str, path: str = "") -> DetectorConfig:
    """The architecture the checkpoint's shapes describe (the defaults for what
    no shape shows: pooler size, stride, eps, dtype; anchors: `load_detector`)."""

    def rows(key: str, axis: int = 0) -> int:
        if key not in state:
            raise DataError(f"cannot read the architecture: no key {key!r}", file=path or None)
        return int(state[key].shape[axis])

    blocks = []
    for prefix in ("backbone.res2.", "backbone.res3.", "backbone.res4.", "roi_heads.res5."):
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if not indices:
            raise DataError(f"cannot read the architecture: no {prefix}* keys", file=path or None)
        blocks.append(max(indices) + 1)
    depth = next((d for d, n in STAGE_BLOCKS.items() if (*n, 3) == tuple(blocks)), None)
    names = _ATTRIBUTE_KEYS[layout]
    attributes = any(_PREDICTOR + name in state for name in names)
    embedding, hidden, scores = (_PREDICTOR + name for name in names)
    return DetectorConfig(
        depth=depth or 101,
        blocks_per_stage=None if depth else tuple(blocks),
        stem_channels=rows("backbone.stem.conv1.weight"),
        res2_channels=rows("backbone.res2.0.conv3.weight"),
        bottleneck_channels=rows("backbone.res2.0.conv1.weight"),
        rpn_channels=rows(_RPN + "conv.weight"),
        num_anchors=rows(_RPN + "anchor_deltas.weight") // 4,
        num_classes=rows(_PREDICTOR + "cls_score.weight"),
        attributes=attributes,
        num_attributes=rows(scores) if attributes else DetectorConfig.num_attributes,
        class_embedding_size=(
            rows(embedding, 1) if attributes else DetectorConfig.class_embedding_size
        ),
        attribute_hidden_size=rows(hidden) if attributes else DetectorConfig.attribute_hidden_size,
    )


def _anchor_kind(stored: np.ndarray | None, layout: str, config: DetectorConfig, path: str) -> str:
    """The generator whose cell anchors the RPN expects (module doc)."""
    if stored is None:
        return "caffe" if layout == BUA else "detectron2"
    stored = np.asarray(stored, np.float32)
    for kind in ANCHOR_KINDS:
        expected = dataclasses.replace(config, anchors=kind).cell_anchors()
        if stored.shape == expected.shape and np.allclose(stored, expected, atol=1e-3):
            return kind
    raise DataError(
        f"its cell anchors ({ANCHORS_KEY}, {list(stored.shape)}) match neither Caffe's nor "
        f"detectron2's generator for sizes {config.anchor_sizes} and ratios "
        f"{config.anchor_ratios}: {np.round(stored, 2).tolist()}",
        file=path,
    )


# ------------------------------------------------------------------ mapping


class _Source(NamedTuple):
    """Where one of our variables comes from: its key, the shape it must have
    there, and the map from that array to ours."""

    key: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]


def _source(name: str, shape: tuple[int, ...], layout: str) -> _Source:
    """The checkpoint key, shape and conversion for our variable `name` of `shape`
    (the table in `detector.py`)."""
    key = "proposal_generator." + name if name.startswith("rpn_head.") else name
    if key.endswith(".kernel"):
        key = key.removesuffix("kernel") + "weight"
    if layout == BUA:
        for ours, theirs in _BUA_ATTRIBUTE_NAMES.items():
            key = key.replace(ours, theirs)
    else:
        key = key.replace("cls_embedding.embedding", "cls_embedding.weight")

    layout_shape, to_ours = tuple(shape), _identity
    if name.endswith(".kernel") and len(shape) == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
        layout_shape = (shape[3], shape[2], shape[0], shape[1])
        to_ours = _conv_kernel
    elif name.endswith(".kernel"):  # linear [O, I] -> [I, O]
        layout_shape = (shape[1], shape[0])
        to_ours = _transpose

    rows = _identity
    if layout == BUA and key.startswith(_RPN + "objectness_logits."):
        rows = _two_way_to_one  # 2-way softmax, (bg, fg) x A -> fg - bg
        layout_shape = (2 * layout_shape[0], *layout_shape[1:])
    elif layout == D2 and key.startswith(_PREDICTOR + "bbox_pred."):
        rows = _background_box_rows  # no background rows in d2
        layout_shape = (layout_shape[0] - 4, *layout_shape[1:])
    elif layout == D2 and key.startswith(
        tuple(_PREDICTOR + p for p in ("cls_score.", "cls_embedding.", "attr_score."))
    ):
        rows = _background_first  # background / "no attribute" last in d2

    def convert(value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(to_ours(rows(np.asarray(value, np.float32))))

    return _Source(key, layout_shape, convert)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _conv_kernel(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0)


def _transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def _two_way_to_one(x: np.ndarray) -> np.ndarray:
    anchors = x.shape[0] // 2
    return x[anchors:] - x[:anchors]


def _background_first(x: np.ndarray) -> np.ndarray:
    return np.roll(x, 1, axis=0)


def _background_box_rows(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((4, *x.shape[1:]), x.dtype), x])


def _ignorable(key: str) -> bool:
    """Keys of the ports that carry nothing we load: BN step counters, and the
    stored anchors (checked, then expressed by `config.anchors`)."""
    return key.endswith(".num_batches_tracked") or key == ANCHORS_KEY


def _gather(
    state: Mapping[str, np.ndarray],
    sources: Mapping[str, _Source],
    layout: str,
    eps: float,
    path: str,
) -> tuple[dict[str, np.ndarray], bool]:
    """Our value for every variable, or one error listing every problem."""
    missing, shapes, values = [], [], {}
    running_stats = True
    for name, source in sources.items():
        value = state.get(source.key)
        if value is None and name.endswith((".running_mean", ".running_var")):
            norm = source.key.rpartition(".")[0]
            if f"{norm}.running_mean" not in state and f"{norm}.running_var" not in state:
                running_stats = False  # weight / bias only: identity statistics
                value = _identity_statistic(name, source.shape, eps)
        if value is None:
            missing.append(source.key)
        elif tuple(value.shape) != source.shape:
            shapes.append(f"{source.key}: expected {list(source.shape)}, found {list(value.shape)}")
        else:
            values[name] = source.convert(value)
    known = {source.key for source in sources.values()}
    unexpected = [k for k in state if k not in known and not _ignorable(k)]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            problems.append(f"shape mismatches ({len(shapes)}): {_listing(shapes)}")
        hint = ""
        if any("res5_bn" in k or k.startswith("backbone.stem.norm") for k in unexpected):
            hint = " (pre-activation ResNet v2 checkpoints, e.g. bua's R152, are not supported)"
        raise DataError(
            f"the checkpoint ({layout} layout) does not fit the detector{hint}: "
            + "; ".join(problems),
            file=path,
        )
    return values, running_stats


def _identity_statistic(name: str, shape: tuple[int, ...], eps: float) -> np.ndarray:
    """detectron2 FrozenBatchNorm2d's defaults, mean 0 and var 1 - eps: the norm
    becomes `weight * x + bias`, as Caffe's scale layer."""
    if name.endswith(".running_mean"):
        return np.zeros(shape, np.float32)
    return np.full(shape, 1.0 - eps, np.float32)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f", ... and {len(items) - _LISTED} more" if len(items) > _LISTED else "")
