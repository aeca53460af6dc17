"""Parameter counts of the presets, from `jax.eval_shape` (no memory used).

python -m uniter_jax.tools.param_count [--preset base --preset large]
"""

from __future__ import annotations

import argparse

import numpy as np
from jax import tree

from uniter_jax.model.config import PRESETS, UniterConfig
from uniter_jax.model.pretraining import abstract_params


def count(params: dict) -> int:
    return int(sum(np.prod(x.shape) for x in tree.leaves(params)))


def parameter_counts(config: UniterConfig) -> dict[str, int]:
    """Parameters per part of `UniterForPretraining`; tied weights counted once."""
    params = abstract_params(config)
    uniter = params["uniter"]
    parts = {
        "text embeddings": count(uniter["embeddings"]),
        "image embeddings": count(uniter["img_embeddings"]),
        "encoder layers": count(uniter["encoder"]),
        "pooler": count(uniter["pooler"]),
    }
    parts["UNITER encoder (all above)"] = count(uniter)
    for head in ("mlm", "mrfr", "mrc", "itm"):
        parts[f"{head} head (untied part)"] = count(params[head])
    parts["total with pretraining heads"] = count(params)
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS))
    names = parser.parse_args(argv).preset or ["tiny", "base", "large"]
    table = {name: parameter_counts(UniterConfig.preset(name)) for name in names}
    rows = list(next(iter(table.values())))
    width = max(map(len, rows))
    print(f"{'':{width}}  " + "  ".join(f"{n:>13}" for n in names))
    for row in rows:
        print(f"{row:{width}}  " + "  ".join(f"{table[n][row]:>13,}" for n in names))


if __name__ == "__main__":
    main()
