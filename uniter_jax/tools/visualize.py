"""PNG pictures of what a checkpoint does with one example: every layer's
attention maps, the six-pattern head classification, and the word-region
alignment as a heatmap and on the boxes (the pictures of notebooks/02_inspect).

  python -m uniter_jax.tools.visualize --checkpoint runs/tiny/model \\
      --world runs/tiny/synthetic --out viz
  python -m uniter_jax.tools.visualize --checkpoint uniter-base.pt \\
      --model-config uniter-base.json --texts STORE/texts/captions_val \\
      --images STORE/images --index 7 --labels objects_vocab.txt \\
      --picture COCO_val2014_000000000042.jpg --out viz
  ... --sentence "a man riding a horse" --image-id 42   # a sentence of one's own

Writes into --out: attention_layerNN.png, head_patterns.png,
wra_heatmap.png, wra_boxes.png and summary.json (the files with their pixel
sizes, the example, each head's pattern and part masses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from uniter_jax.analysis import encoder as enc
from uniter_jax.analysis import example as ex
from uniter_jax.analysis import head_patterns, plots
from uniter_jax.data import synthetic
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model.config import PRESETS, ConfigError, UniterConfig
from uniter_jax.objectives.wra import SOLVERS, WraSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uniter_jax.tools.visualize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="parameter checkpoint folder or UNITER .pt")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--model-config", help="the original JSON config, for a .pt file")
    shape.add_argument("--preset", choices=sorted(PRESETS), help="instead of --model-config")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--world", help="a synthetic world folder (its captions_val and images)")
    data.add_argument("--texts", help="a text store (with --images)")
    p.add_argument("--images", help="the image store of --texts")
    p.add_argument("--index", type=int, default=0, help="which text of the store to picture")
    p.add_argument("--sentence", help="picture this sentence instead (with --image-id)")
    p.add_argument("--image-id", help="the stored image for --sentence (default: --index's)")
    p.add_argument("--vocab", help="vocab.txt (default: the one the text store records)")
    p.add_argument("--labels", help="detector class names, one per line (Visual Genome's)")
    p.add_argument("--picture", help="the image file, to draw the boxes on (default: blank)")
    p.add_argument(
        "--pattern-examples",
        type=int,
        default=64,
        help="texts (from --index on) whose attention is averaged to sort the heads",
    )
    p.add_argument("--max-text-len", type=int, default=60)
    wra = WraSettings()  # the run's values, if it trained with others
    p.add_argument("--wra-solver", choices=SOLVERS, default=wra.solver, help="WRA plan solver")
    p.add_argument("--wra-epsilon", type=float, default=wra.epsilon, help="Sinkhorn epsilon")
    p.add_argument("--wra-beta", type=float, default=wra.beta, help="IPOT proximal step")
    p.add_argument("--wra-iterations", type=int, default=wra.iterations)
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--out", required=True, help="output folder")
    return p


def _model_config(args: argparse.Namespace) -> UniterConfig | None:
    if args.model_config:
        return UniterConfig.from_json(args.model_config)
    if args.preset:
        return UniterConfig.preset(args.preset)
    return None


def _picture(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write_pictures(
    model,
    focus: ex.Example,
    pattern_examples: Sequence[ex.Example],
    out: str,
    *,
    picture: np.ndarray | None = None,
    dpi: int = 100,
    wra: WraSettings | None = None,
) -> dict:
    """Writes the pictures of `focus` (its heads sorted on `pattern_examples`)
    into `out`; returns the summary that is also written as summary.json."""
    os.makedirs(out, exist_ok=True)
    attentions, num_texts, specials = [], [], []
    progress = tqdm(total=len(pattern_examples), unit="example", desc="attention")
    for inspection in enc.iter_inspect(model, pattern_examples):
        attentions.append(inspection.attention)
        num_texts.append(inspection.example.num_text)
        specials.append(inspection.example.special)
        progress.update()
    progress.close()
    masses = head_patterns.head_masses(attentions, num_texts, specials)
    patterns = head_patterns.classify(masses)
    (inspection,) = enc.inspect(model, [focus])
    plan = enc.transport_plan(inspection, wra)
    figures = {
        f"attention_layer{layer:02d}.png": plots.attention_figure(
            inspection.attention[layer],
            focus,
            title=f"layer {layer}: attention (rows: queries; text, then regions)",
            patterns=patterns[layer],
        )
        for layer in range(inspection.attention.shape[0])
    }
    figures["head_patterns.png"] = plots.patterns_figure(
        patterns, title=f"attention patterns per layer ({len(pattern_examples)} examples)"
    )
    figures["wra_heatmap.png"] = plots.alignment_figure(plan, focus)
    figures["wra_boxes.png"] = plots.alignment_boxes_figure(plan, focus, picture=picture)
    files = {}
    for name, figure in figures.items():
        figure.savefig(os.path.join(out, name), dpi=dpi)
        width, height = figure.get_size_inches() * dpi
        files[name] = [round(width), round(height)]
    summary = {
        "files": files,
        "example": {
            "text_id": focus.text_id,
            "image_id": focus.image_id,
            "tokens": list(focus.tokens),
            "regions": list(focus.labels),
        },
        "pattern_examples": len(pattern_examples),
        "patterns": patterns.tolist(),
        "masses": {
            part: masses[..., k].round(4).tolist() for k, part in enumerate(head_patterns.PARTS)
        },
        "pattern_counts": dict(
            zip(
                head_patterns.PATTERNS,
                head_patterns.counts(patterns).sum(axis=0).tolist(),
                strict=True,
            )
        ),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.world:
            texts_dir = os.path.join(args.world, "texts", "captions_val")
            images_dir = os.path.join(args.world, "images")
            vocab_path = args.vocab or os.path.join(args.world, "vocab.txt")
            names = synthetic.label_names()
        else:
            if not args.images:
                raise ValueError("--texts needs --images")
            texts_dir, images_dir, vocab_path = args.texts, args.images, args.vocab
            names = None
        texts, images = TextStore(texts_dir), ImageStore(images_dir)
        if args.labels:
            if not images.num_labels:
                raise DataError("the image store has no detector labels", file=images_dir)
            names = ex.label_names(images.num_labels, args.labels)
        vocab = ex.store_vocabulary(texts, vocab_path)
        options = dict(max_text_len=args.max_text_len, names=names)
        if not 0 <= args.index < len(texts):
            raise IndexError(f"{texts_dir}: no text {args.index} (the store holds {len(texts)})")
        count = max(1, min(args.pattern_examples, len(texts)))
        indices = [(args.index + k) % len(texts) for k in range(count)]
        stored = [ex.from_store(texts, images, i, vocab, **options) for i in indices]
        if args.sentence:
            image_id = args.image_id or stored[0].image_id
            lowercase = bool((texts.manifest.get("vocab") or {}).get("lowercase"))
            focus = ex.from_sentence(
                args.sentence, image_id, images, vocab, lowercase=lowercase, **options
            )
        else:
            focus = stored[0]
        model = enc.load_encoder(args.checkpoint, _model_config(args))
        wra = WraSettings(args.wra_solver, args.wra_epsilon, args.wra_beta, args.wra_iterations)
        summary = write_pictures(
            model,
            focus,
            stored,
            args.out,
            picture=_picture(args.picture),
            dpi=args.dpi,
            wra=wra,
        )
    except (DataError, ConfigError, ValueError, FileNotFoundError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(summary['files'])} pictures to {args.out}:")
    for name, (width, height) in summary["files"].items():
        print(f"  {name}  {width} x {height}")
    print(
        "heads per pattern: " + ", ".join(f"{k} {v}" for k, v in summary["pattern_counts"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
