"""Ranking every text-image pair of a retrieval split with the cross-encoder,
the dual-encoder first stage of the two-stage ranking, and the files the
original's evaluation writes (`downstream/retrieval.py` trains the encoder
and is the task's `DownstreamTask`).

Scores of every text-image pair go in chunks of texts with progress and,
given a cache folder, resumable partial results. Two-stage: late-interaction
scores of the separately encoded texts and images choose each text's `k`
candidate images, and only those pairs get the cross-encoder; the report
gives the pair-count reduction and the R@K change against the full ranking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from uniter_jax.data.pipeline import Pipeline
from uniter_jax.data.plan import EpochPlan
from uniter_jax.downstream import metrics
from uniter_jax.downstream.prediction import predict_batches
from uniter_jax.sharding import Layout
from uniter_jax.train.step import Objective


def late_interaction(tokens, token_mask, regions, region_mask):
    """Late-interaction similarity of texts and images encoded apart: for each
    token its best cosine over the image's regions, averaged over the text's
    tokens. `tokens [..., Lt, H]`, `regions [..., Nr, H]` unit-norm, masks
    `[..., Lt]` / `[..., Nr]`, leading axes broadcast -> `[...]` (numpy or jax)."""
    xp = jnp if isinstance(tokens, jax.Array) or isinstance(regions, jax.Array) else np
    cosine = xp.einsum("...th,...nh->...tn", tokens, regions)
    cosine = xp.where(region_mask[..., None, :] > 0, cosine, -2.0)
    best = cosine.max(-1)
    weight = (token_mask > 0).astype(best.dtype)
    return (best * weight).sum(-1) / xp.maximum(weight.sum(-1), 1)


@dataclasses.dataclass(frozen=True)
class Split:
    """The texts of a split and the images they describe."""

    images: np.ndarray  # [I] image store positions, sorted
    text_image: np.ndarray  # [T] column of each text's image

    @classmethod
    def of(cls, pipeline: Pipeline) -> Split:
        images = np.unique(pipeline.text_images)
        return cls(images, np.searchsorted(images, pipeline.text_images))


def _run(
    pipeline: Pipeline,
    plan: EpochPlan,
    params: dict,
    objective: Objective,
    settings,
    layout: Layout,
):
    """Yields `(batch, outputs)` for this host's rows of every batch of `plan`."""
    settings = dataclasses.replace(settings, tasks=objective)
    return predict_batches(
        params,
        pipeline.batches(plan),
        settings,
        layout,
        progress=f"scoring ({objective.mode})",
        total=plan.num_steps,
    )


def pair_scores(
    params: dict,
    pipeline: Pipeline,
    settings,
    layout: Layout,
    texts: np.ndarray,
    columns: np.ndarray,
    split: Split,
) -> np.ndarray:
    """Cross-encoder scores `[M]` of the pairs (text index, image column)."""
    plan = pipeline.plan_pairs(texts, split.images[columns])
    objective = dataclasses.replace(settings.tasks, mode="cross")
    # Rows come back bucketed, not in pair order: find each by its (text, column) key.
    width = len(split.images)
    keys = texts.astype(np.int64) * width + columns
    order = np.argsort(keys, kind="stable")
    out = np.full(len(texts), np.nan, np.float32)
    for batch, result in _run(pipeline, plan, params, objective, settings, layout):
        keep = batch["valid"] > 0
        column = np.searchsorted(split.images, batch["image_index"][keep])
        found = np.searchsorted(keys, batch["text_index"][keep] * width + column, sorter=order)
        out[order[found]] = result["score"][keep]
    if jax.process_count() > 1:
        gathered = multihost_utils.process_allgather(out)
        out = np.nanmax(np.where(np.isnan(gathered), -np.inf, gathered), axis=0)
    if np.isnan(out).any():
        raise RuntimeError("some pairs were not scored")
    return out


def params_fingerprint(params: dict) -> str:
    """A digest of the parameters' values, to key cached scores by what scored
    them: a model trained again into the same folder gets a new one.

    Two weighted sums per array, reduced where the arrays live (sharded over
    hosts alike), then hashed with the tree's paths.
    """

    def sums(x):
        x = x.astype(jnp.float32).ravel()
        w = jnp.sin(jnp.arange(x.size, dtype=jnp.float32) * 0.618 + 1.0)
        return jnp.stack([jnp.sum(x * w), jnp.sum(x * x)])

    reduced = jax.jit(lambda tree: jax.tree.map(sums, tree))(params)
    digest = hashlib.sha256()
    for path, value in jax.tree_util.tree_leaves_with_path(reduced):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.asarray(value, np.float32).tobytes())
    return digest.hexdigest()[:16]


def full_scores(
    params: dict,
    pipeline: Pipeline,
    settings,
    layout: Layout,
    *,
    chunk_texts: int = 256,
    cache_dir: str | None = None,
    fingerprint: str = "",
) -> np.ndarray:
    """`[T, I]` cross-encoder scores of every text with every image of the split.

    Texts go in chunks of `chunk_texts` (x all images); with `cache_dir`, each
    finished chunk is saved there and reused by a later call with the same
    `fingerprint` (`params_fingerprint` of the scoring parameters), so a long
    ranking resumes.
    """
    split = Split.of(pipeline)
    t_count, i_count = len(split.text_image), len(split.images)
    scores = np.zeros((t_count, i_count), np.float32)
    cache = epath.Path(cache_dir) if cache_dir else None
    meta = {"texts": t_count, "images": i_count, "chunk": chunk_texts, "params": fingerprint}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        meta_path = cache / "meta.json"
        if not meta_path.exists() or json.loads(meta_path.read_text()) != meta:
            for old in cache.glob("chunk_*.npy"):
                old.unlink()
            if jax.process_index() == 0:
                meta_path.write_text(json.dumps(meta))
    start, done = time.perf_counter(), 0
    chunks = range(0, t_count, chunk_texts)
    for n, first in enumerate(chunks):
        last = min(first + chunk_texts, t_count)
        path = cache / f"chunk_{n:06d}.npy" if cache is not None else None
        if path is not None and path.exists():
            scores[first:last] = np.load(path.as_posix())
            continue
        texts = np.repeat(np.arange(first, last), i_count)
        columns = np.tile(np.arange(i_count), last - first)
        block = pair_scores(params, pipeline, settings, layout, texts, columns, split)
        scores[first:last] = block.reshape(last - first, i_count)
        if path is not None and jax.process_index() == 0:
            with path.open("wb") as f:
                np.save(f, scores[first:last])
        done += len(texts)
        elapsed = time.perf_counter() - start
        logging.info(
            "ranking: texts %d of %d, %.0f pairs/s, about %.0fs left",
            last,
            t_count,
            done / elapsed,
            elapsed / done * (t_count - last) * i_count,
        )
    return scores


def embeddings(
    params: dict, pipeline: Pipeline, settings, layout: Layout
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Texts and images of the split encoded apart: `(tokens [T, L, H], mask [T, L])`
    and `(regions [I, N, H], mask [I, N])`, padded to the longest bucket."""
    split = Split.of(pipeline)
    t_count = len(split.text_image)
    texts_plan = pipeline.plan_pairs(np.arange(t_count), split.images[split.text_image])
    # One row per image, with any of its texts (the image pass reads only [CLS]).
    carrier = np.array([np.argmax(split.text_image == c) for c in range(len(split.images))])
    images_plan = pipeline.plan_pairs(carrier, split.images)
    longest = max(b.text_len for b in pipeline.config.buckets)
    most = max(b.num_regions for b in pipeline.config.buckets)
    out = []
    for mode, plan, key, size, length in (
        ("text", texts_plan, "text_index", t_count, longest),
        ("image", images_plan, "image_index", len(split.images), most),
    ):
        objective = dataclasses.replace(settings.tasks, mode=mode)
        table, mask = None, np.zeros((size, length), np.float32)
        for batch, result in _run(pipeline, plan, params, objective, settings, layout):
            values = result["embedding"]
            if table is None:
                table = np.zeros((size, length, values.shape[-1]), np.float32)
            keep = batch["valid"] > 0
            where = batch[key][keep]
            if key == "image_index":
                where = np.searchsorted(split.images, where)
            table[where, : values.shape[1]] = values[keep]
            mask[where, : values.shape[1]] = result["mask"][keep]
        if jax.process_count() > 1:
            # Rows are disjoint between hosts (each predicted its own).
            table = multihost_utils.process_allgather(table).sum(0)
            mask = multihost_utils.process_allgather(mask).sum(0)
        out.append((table, mask))
    return out[0], out[1]


def dual_scores(texts, images, chunk: int = 64) -> np.ndarray:
    """`[T, I]` late-interaction scores of `embeddings`' outputs, in chunks of texts."""
    (tokens, token_mask), (regions, region_mask) = texts, images
    out = np.zeros((len(tokens), len(regions)), np.float32)
    for first in range(0, len(tokens), chunk):
        part = slice(first, first + chunk)
        out[part] = late_interaction(
            tokens[part, None], token_mask[part, None], regions[None], region_mask[None]
        )
    return out


def rank(
    params: dict,
    pipeline: Pipeline,
    settings,
    layout: Layout,
    *,
    two_stage_k: int = 0,
    chunk_texts: int = 256,
    cache_dir: str | None = None,
    fingerprint: str = "",
) -> tuple[dict[str, float], np.ndarray]:
    """Recall@K of the full ranking and, with `two_stage_k`, of the two-stage one.

    Returns `(metrics, [T, I] scores)`; two-stage metrics are prefixed
    `two_stage/` with `pairs_reduction` (full pairs / two-stage cross pairs) and
    `delta_*` (two-stage minus full, in recall points x 100).
    """
    split = Split.of(pipeline)
    scores = full_scores(
        params,
        pipeline,
        settings,
        layout,
        chunk_texts=chunk_texts,
        cache_dir=cache_dir,
        fingerprint=fingerprint,
    )
    out = metrics.recall_at_k(scores, split.text_image)
    if two_stage_k:
        k = min(two_stage_k, len(split.images))
        dual = dual_scores(*embeddings(params, pipeline, settings, layout))
        candidates = np.argsort(-dual, axis=1, kind="stable")[:, :k]  # [T, k]
        texts = np.repeat(np.arange(len(dual)), k)
        cross = pair_scores(
            params, pipeline, settings, layout, texts, candidates.ravel(), split
        ).reshape(-1, k)
        staged = two_stage_scores(dual, candidates, cross)
        recall = metrics.recall_at_k(staged, split.text_image)
        dual_recall = metrics.recall_at_k(dual, split.text_image)
        out["two_stage/pairs_reduction"] = dual.size / cross.size
        out["two_stage/candidate_recall"] = float(
            np.mean((candidates == split.text_image[:, None]).any(1))
        )
        for name, value in recall.items():
            out[f"two_stage/{name}"] = value
            out[f"two_stage/delta_{name}"] = 100 * (value - out[name])
        out["dual/t2i_r1"], out["dual/i2t_r1"] = dual_recall["t2i_r1"], dual_recall["i2t_r1"]
    return out, scores


def two_stage_scores(dual: np.ndarray, candidates: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """`[T, I]` scores of the two-stage ranking: a text's candidates by cross-encoder
    score, all above its other images, which keep their dual order."""
    staged = dual - (np.abs(dual).max() + np.abs(cross).max() + 1) * 4  # below any cross score
    rows = np.arange(len(dual))[:, None]
    staged[rows, candidates] = cross
    return staged


def original_scores(metrics_: dict[str, float]) -> dict[str, float]:
    """Recall under the original's evaluation names (`scores.json`): `img_r*`
    is image retrieval (our `t2i_r*`), `txt_r*` text retrieval (`i2t_r*`), as
    fractions, with their means and the mean of both."""
    out = {}
    for ours, theirs in (("t2i", "img"), ("i2t", "txt")):
        for k in (1, 5, 10):
            out[f"{theirs}_r{k}"] = metrics_[f"{ours}_r{k}"]
        out[f"{theirs}_r_mean"] = sum(out[f"{theirs}_r{k}"] for k in (1, 5, 10)) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def write_ranking(
    scores: np.ndarray, text_ids: np.ndarray, image_ids: np.ndarray, path: str, top: int = 10
) -> None:
    """JSON: each text's `top` images and each image's `top` texts, best first;
    `scores [T, I]` with rows in `text_ids`' order and columns in `image_ids`'."""
    t2i = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    i2t = np.argsort(-scores, axis=0, kind="stable")[:top].T
    result = {
        "t2i": {
            str(t): [str(image_ids[c]) for c in row] for t, row in zip(text_ids, t2i, strict=True)
        },
        "i2t": {
            str(i): [str(text_ids[r]) for r in row] for i, row in zip(image_ids, i2t, strict=True)
        },
    }
    epath.Path(path).write_text(json.dumps(result))
