"""The pictures: attention maps, head patterns, word-region alignment, regions
on their image, training curves. Each function returns a matplotlib `Figure`
built without pyplot (no global state, no display needed): notebooks show it,
`tools/visualize.py` saves it. Sizes are fixed in inches, so a figure saved
at `dpi` is exactly `FIGURE_INCHES x dpi` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from uniter_jax.analysis.example import Example
from uniter_jax.analysis.head_patterns import PATTERNS, counts

PANEL = 3.2  # inches per attention-map panel
HEADS_PER_ROW = 4
# The synthetic world's image size; boxes are drawn on a blank canvas of this
# shape when no picture is given.
CANVAS = (640, 480)
PATTERN_COLOURS = dict(
    zip(PATTERNS, ("#4c72b0", "#55a868", "#8172b2", "#dd8452", "#937860", "#c44e52"), strict=True)
)
_LABELLED = 40  # at most this many positions get tick labels


def attention_size(num_heads: int) -> tuple[float, float]:
    """Inches of `attention_figure` for `num_heads` heads."""
    cols = min(num_heads, HEADS_PER_ROW)
    return PANEL * cols, PANEL * math.ceil(num_heads / cols) + 0.5


def attention_figure(
    attention: np.ndarray,
    example: Example,
    title: str = "",
    patterns: Sequence[str] | None = None,
) -> Figure:
    """One layer's heads `[heads, L, L]` as maps (rows = queries), text then
    regions, split by white lines; each panel titled with its head's pattern."""
    heads = attention.shape[0]
    cols = min(heads, HEADS_PER_ROW)
    fig = Figure(figsize=attention_size(heads), layout="constrained")
    names = [*example.tokens, *(label.split(": ")[-1] for label in example.labels)]
    for h in range(heads):
        ax = fig.add_subplot(math.ceil(heads / cols), cols, h + 1)
        ax.imshow(attention[h], cmap="viridis", vmin=0.0, interpolation="nearest")
        for edge in (example.num_text - 0.5,):
            ax.axhline(edge, color="white", linewidth=0.8)
            ax.axvline(edge, color="white", linewidth=0.8)
        label = f"head {h}" + (f": {patterns[h]}" if patterns is not None else "")
        ax.set_title(label, fontsize=9)
        if len(names) <= _LABELLED:
            ticks = np.arange(len(names))
            ax.set_xticks(ticks, names, rotation=90, fontsize=4)
            ax.set_yticks(ticks, names, fontsize=4)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title or "attention (rows: queries; text, then regions)", fontsize=11)
    return fig


PATTERNS_SIZE = (11.0, 4.0)


def patterns_figure(patterns: np.ndarray, title: str = "") -> Figure:
    """`[layers, heads]` pattern names: heads per pattern in each layer
    (stacked bars) and the share of each pattern over all heads."""
    per_layer = counts(patterns)
    layers = np.arange(per_layer.shape[0])
    fig = Figure(figsize=PATTERNS_SIZE, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    bottom = np.zeros(len(layers))
    for k, name in enumerate(PATTERNS):
        left.bar(layers, per_layer[:, k], bottom=bottom, color=PATTERN_COLOURS[name], label=name)
        bottom += per_layer[:, k]
    left.set_xlabel("layer")
    left.set_ylabel("heads")
    left.set_xticks(layers)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    share = per_layer.sum(axis=0) / max(per_layer.sum(), 1)
    right.barh(np.arange(len(PATTERNS)), 100 * share, color=list(PATTERN_COLOURS.values()))
    right.set_yticks(np.arange(len(PATTERNS)), PATTERNS, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("% of all heads")
    right.set_xlim(0, 100)
    fig.suptitle(title or "attention patterns per layer", fontsize=11)
    return fig


ALIGNMENT_SIZE = (8.0, 6.0)


def alignment_figure(plan: np.ndarray, example: Example, title: str = "") -> Figure:
    """The WRA transport plan `[Lt, Nr]` as a words x regions heatmap, each
    row scaled to sum to 1 (where each word's mass goes)."""
    share = plan / np.maximum(plan.sum(axis=1, keepdims=True), 1e-30)
    fig = Figure(figsize=ALIGNMENT_SIZE, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="magma", vmin=0.0, aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(example.num_text), example.tokens, fontsize=7)
    ax.set_xticks(np.arange(example.num_regions), example.labels, rotation=90, fontsize=6)
    ax.set_xlabel("regions")
    ax.set_ylabel("words")
    fig.colorbar(image, ax=ax, label="share of the word's transport mass")
    fig.suptitle(title or "word-region alignment (optimal transport plan)", fontsize=11)
    return fig


def draw_regions(
    ax,
    boxes: np.ndarray,
    weights: np.ndarray,
    labels: Sequence[str] = (),
    picture: np.ndarray | None = None,
    top: int = 3,
) -> None:
    """Draws normalised boxes `[Nr, >=4]` on `picture` (an `[H, W, 3]` array)
    or a blank canvas; colour and line width follow `weights` `[Nr]`; the
    `top` heaviest regions are labelled."""
    width, height = CANVAS if picture is None else (picture.shape[1], picture.shape[0])
    if picture is None:
        ax.add_patch(Rectangle((0, 0), width, height, color="#eeeeee"))
    else:
        ax.imshow(picture)
    scale = weights / max(float(np.max(weights)), 1e-30)
    colours = matplotlib.colormaps["YlOrRd"]
    order = np.argsort(scale)  # the heaviest drawn last, on top
    for rank, i in enumerate(order):
        x1, y1, x2, y2 = boxes[i, :4] * np.array([width, height, width, height])
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                edgecolor=colours(scale[i]),
                linewidth=0.5 + 3.0 * scale[i],
                alpha=0.25 + 0.75 * scale[i],
            )
        )
        if labels and rank >= len(order) - top:
            ax.text(x1, y1, labels[i], fontsize=6, color="black", backgroundcolor="white")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def peaked_words(plan: np.ndarray, example: Example, count: int = 4) -> list[int]:
    """The `count` non-special word positions whose transport mass is the
    most concentrated on one region, in text order."""
    share = plan / np.maximum(plan.sum(axis=1, keepdims=True), 1e-30)
    words = [i for i in range(example.num_text) if i not in example.special]
    best = sorted(words, key=lambda i: -share[i].max())[:count]
    return sorted(best)


BOXES_PANEL = (4.0, 3.6)


def alignment_boxes_figure(
    plan: np.ndarray,
    example: Example,
    words: Sequence[int] | None = None,
    picture: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """One panel per word: the image's boxes coloured by where that word's
    transport mass goes. `words` are text positions (default: `peaked_words`)."""
    words = list(words) if words is not None else peaked_words(plan, example)
    fig = Figure(figsize=(BOXES_PANEL[0] * len(words), BOXES_PANEL[1]), layout="constrained")
    for k, i in enumerate(words):
        ax = fig.add_subplot(1, len(words), k + 1)
        draw_regions(ax, example.boxes, plan[i], example.labels, picture, top=1)
        ax.set_title(f"'{example.tokens[i]}'", fontsize=10)
    fig.suptitle(title or "word-region alignment on the boxes", fontsize=11)
    return fig


def regions_figure(
    panels: Sequence[tuple[Example, np.ndarray, str]], picture: np.ndarray | None = None
) -> Figure:
    """Panels of `(example, region weights [Nr], caption)`, three to a row."""
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(
        figsize=(BOXES_PANEL[0] * cols, (BOXES_PANEL[1] + 0.6) * rows), layout="constrained"
    )
    for k, (example, weights, caption) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        draw_regions(ax, example.boxes, weights, example.labels, picture)
        ax.set_title(caption, fontsize=8, wrap=True)
    return fig


CURVES_SIZE = (11.0, 4.0)


def training_curves(history: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """`metrics.jsonl` rows -> training losses per task and validation
    accuracies (and recalls) against the step."""
    fig = Figure(figsize=CURVES_SIZE, layout="constrained")
    train_ax, val_ax = fig.subplots(1, 2)
    for ax, prefix, suffixes in (
        (train_ax, "train/", ("/loss",)),
        (val_ax, "val/", ("accuracy", "_r1", "_r5", "_r10")),
    ):
        names = sorted(
            {k for row in history for k in row if k.startswith(prefix) and k.endswith(suffixes)}
        )
        for name in names:
            points = [(row["step"], row[name]) for row in history if name in row]
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, label=name)
        ax.set_xlabel("step")
        if names:
            ax.legend(fontsize=7)
    train_ax.set_title("training loss per task", fontsize=10)
    val_ax.set_title("validation accuracy", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
