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
  python -m uniter_jax.tools.visualize --checkpoint runs/base/model \\
      --image photo.jpg --detector bua-caffe-frcn-r101_with_attributes.pth \\
      --labels objects_vocab.txt --vocab vocab.txt --sentence "a dog on a sofa" --out viz
  ... --random-detector   # instead of --detector: boxes and labels mean nothing

Writes into --out: attention_layerNN.png, head_patterns.png,
wra_heatmap.png, wra_boxes.png and summary.json (the files with their pixel
sizes, the example, each head's pattern and part masses). With --image
(one's own picture, detected here; see tools/own_image.py), also regions.png
(the image with its regions and labels), a one-image store in regions_store/,
and in summary.json the regions, the detector and the ITM score (when
--checkpoint is a parameter checkpoint folder with the pretraining heads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from uniter_jax.analysis import encoder as enc
from uniter_jax.analysis import example as ex
from uniter_jax.analysis import head_patterns, itm_scores, plots
from uniter_jax.data import synthetic
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.random_weights import random_detector
from uniter_jax.features.weights import load_detector
from uniter_jax.model.config import PRESETS, ConfigError, UniterConfig
from uniter_jax.objectives.wra import SOLVERS, WraSettings
from uniter_jax.tools import own_image


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
    data.add_argument(
        "--image", help="one's own image file, detected here (with --sentence and --vocab)"
    )
    detector = p.add_mutually_exclusive_group()
    detector.add_argument("--detector", help="detector weights for --image (bua .pth, d2 .pkl)")
    detector.add_argument(
        "--random-detector",
        action="store_true",
        help="a random ResNet-101 detector for --image: for plumbing, its labels are meaningless",
    )
    p.add_argument("--lowercase", action="store_true", help="lowercase --sentence (--image)")
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


def write_own_image(
    checkpoint: str,
    model_config: UniterConfig | None,
    regions: own_image.DetectedRegions,
    picture: np.ndarray,
    sentence: str,
    vocab: ex.Vocabulary,
    out: str,
    *,
    lowercase: bool = False,
    max_text_len: int = 60,
    dpi: int = 100,
    wra: WraSettings | None = None,
) -> dict:
    """The pictures of `sentence` with one's own image's `regions` (every region
    the detector kept), regions.png and the ITM score; returns the summary."""
    os.makedirs(out, exist_ok=True)
    images = own_image.write_store(regions, os.path.join(out, "regions_store"))
    selection = ex.RegionSelection(conf_th=-1.0, min_bb=1, max_bb=len(regions.labels))
    focus = ex.from_sentence(
        sentence,
        regions.image_id,
        images,
        vocab,
        lowercase=lowercase,
        max_text_len=max_text_len,
        selection=selection,
    )
    # The detector's own labels (argmax over objects), not the soft labels' argmax.
    focus = dataclasses.replace(focus, labels=regions.labels)
    itm = None
    if os.path.isdir(checkpoint):  # a parameter checkpoint folder: the ITM head is there
        scores = itm_scores.itm_scores(
            itm_scores.load_pretraining(checkpoint),
            images,
            vocab,
            [(regions.image_id, sentence)],
            selection=selection,
            lowercase=lowercase,
            max_text_len=max_text_len,
            batch_size=1,
        )
        itm = {k: round(float(v[0]), 4) for k, v in scores.items()}
    model = enc.load_encoder(checkpoint, model_config)
    summary = write_pictures(model, focus, [focus], out, picture=picture, dpi=dpi, wra=wra)
    title = f"{len(regions.labels)} regions of {regions.image_id}"
    if itm is not None:
        title += f"; ITM P(match) {itm['probability']:.3f} for '{sentence}'"
    figure = own_image.regions_figure(regions, picture, title)
    figure.savefig(os.path.join(out, "regions.png"), dpi=dpi)
    width, height = figure.get_size_inches() * dpi
    summary["files"]["regions.png"] = [round(width), round(height)]
    summary["detector"] = regions.note or "trained weights"
    summary["itm"] = itm
    summary["regions"] = [
        {"label": label, "box": box.round(2).tolist(), "confidence": round(float(conf), 4)}
        for label, box, conf in zip(regions.labels, regions.boxes, regions.confidence, strict=True)
    ]
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _own_image(args: argparse.Namespace, wra: WraSettings) -> dict:
    """--image: detect its regions, then `write_own_image`."""
    if not (args.sentence and args.vocab):
        raise ValueError("--image needs --sentence and --vocab")
    if args.detector:
        detector, detector_config, _ = load_detector(args.detector)
        note = ""
    elif args.random_detector:
        detector_config = DetectorConfig()
        detector, note = random_detector(detector_config), own_image.RANDOM_NOTE
        print(note)
    else:
        raise ValueError("--image needs --detector FILE or --random-detector")
    names = None
    if args.labels:
        names = ex.label_names(detector_config.num_classes, args.labels)
    regions = own_image.detect_regions(
        args.image, detector, detector_config, names=names, note=note
    )
    return write_own_image(
        args.checkpoint,
        _model_config(args),
        regions,
        _picture(args.image),
        args.sentence,
        ex.Vocabulary(args.vocab),
        args.out,
        lowercase=args.lowercase,
        max_text_len=args.max_text_len,
        dpi=args.dpi,
        wra=wra,
    )


def _stored(args: argparse.Namespace, wra: WraSettings) -> dict:
    """The pictures of a stored text (or --sentence) with a stored image."""
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
    return write_pictures(
        model,
        focus,
        stored,
        args.out,
        picture=_picture(args.picture),
        dpi=args.dpi,
        wra=wra,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wra = WraSettings(args.wra_solver, args.wra_epsilon, args.wra_beta, args.wra_iterations)
    try:
        summary = _own_image(args, wra) if args.image else _stored(args, wra)
    except (DataError, ConfigError, ValueError, FileNotFoundError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(summary['files'])} pictures to {args.out}:")
    for name, (width, height) in summary["files"].items():
        print(f"  {name}  {width} x {height}")
    print(
        "heads per pattern: " + ", ".join(f"{k} {v}" for k, v in summary["pattern_counts"].items())
    )
    if args.image:
        print(f"{len(summary['regions'])} regions; detector: {summary['detector']}")
        itm = summary["itm"]
        if itm is None:
            print("ITM score: needs a parameter checkpoint folder with the pretraining heads")
        else:
            print(f"ITM: P(match) {itm['probability']:.4f}, margin {itm['margin']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
