"""Random model batches of given shapes, for the tests and benchmarks/.

Rows are valid up to their own text length and region count; what lies past
them is padding, which a correct model never reads: the region padding holds
random values like the valid regions, and the text padding holds `pad_id`
(random ids when it is None).
"""

from collections.abc import Sequence

import numpy as np


def random_text(
    rng: np.random.Generator | int,
    lengths: Sequence[int],
    length: int,
    *,
    ids: tuple[int, int],
    cls_id: int | None = None,
    sep_id: int | None = None,
    pad_id: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `[B, L]` drawn from `[ids[0], ids[1])` and their mask `[B, L]`
    (both int32), row b valid up to `lengths[b]`; `cls_id` first and `sep_id`
    last in each row when given."""
    rng = np.random.default_rng(rng)
    lengths = np.asarray(lengths)
    input_ids = rng.integers(*ids, (len(lengths), length)).astype(np.int32)
    text_mask = (np.arange(length) < lengths[:, None]).astype(np.int32)
    if cls_id is not None:
        input_ids[:, 0] = cls_id
    if sep_id is not None:
        input_ids[np.arange(len(lengths)), lengths - 1] = sep_id
    if pad_id is not None:
        input_ids[text_mask == 0] = pad_id
    return input_ids, text_mask


def random_batch(
    rng: np.random.Generator | int,
    text_lens: Sequence[int],
    region_counts: Sequence[int],
    *,
    text: int,
    regions: int,
    img_dim: int,
    ids: tuple[int, int],
    cls_id: int | None = None,
    sep_id: int | None = None,
    pad_id: int | None = 0,
    num_labels: int = 0,
    dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """The model's inputs for `len(text_lens)` rows of `text` token and
    `regions` region positions, as the input pipeline emits them:

      input_ids, text_mask `[B, text]` int32 (see `random_text`),
      img_feat `[B, regions, img_dim]` normal(0, 1) in `dtype`,
      img_pos `[B, regions, 7]` uniform(0, 1) float32,
      img_mask `[B, regions]` int32, row b valid up to `region_counts[b]`,
      img_soft_labels `[B, regions, num_labels]` in `dtype`, uniform over
        the probability simplex, when `num_labels` > 0.
    """
    rng = np.random.default_rng(rng)
    input_ids, text_mask = random_text(
        rng, text_lens, text, ids=ids, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id
    )
    rows = len(input_ids)
    batch = {
        "input_ids": input_ids,
        "text_mask": text_mask,
        "img_feat": rng.normal(size=(rows, regions, img_dim)).astype(dtype),
        "img_pos": rng.uniform(size=(rows, regions, 7)).astype(np.float32),
        "img_mask": (np.arange(regions) < np.asarray(region_counts)[:, None]).astype(np.int32),
    }
    if num_labels:
        soft = rng.dirichlet(np.ones(num_labels), (rows, regions))
        batch["img_soft_labels"] = soft.astype(dtype)
    return batch
