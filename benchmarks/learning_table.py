"""The learning table: pretraining learns grounding on worlds it was not tuned on.

For each named world of `uniter_jax.data.scenes.WORLDS` and each seed, it
writes the world in the public formats (through the converters), computes
the baselines that learn nothing from region features
(`uniter_jax.analysis.learning_baselines`, the VQA per-question-type prior),
pretrains with one recipe (`configs/pretrain.py:<preset>`, only the data
paths, the region bucket and the seed set per world), scores the validation
captions against their hard negatives with the ITM head, and fine-tunes VQA
from the pretrained weights and from scratch. Each metric is compared with
its baselines plus the margin in MARGINS. With `--control` it also
pretrains the same recipe without attention between words and regions
(`model.cross_modal_attention=False`): what the text alone and the other
regions alone teach becomes a baseline for MLM and MRC.

  python benchmarks/learning_table.py --out runs/learning       # all worlds, seeds 0 1, tiny
  python benchmarks/learning_table.py --out runs/learning --worlds clutter --seeds 0
  python benchmarks/learning_table.py --out runs/learning --worlds clutter --control
  python benchmarks/learning_table.py --out runs/learning --vqa-runs 3 --reuse  # more VQA seeds

Writes `table.md` (world x seed x metric x baseline) and `table.json` under
`--out`; exits 1 if any row misses a margin.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from uniter_jax.analysis import learning_baselines as baselines  # noqa: E402
from uniter_jax.analysis.encoder import iter_inspect, load_encoder  # noqa: E402
from uniter_jax.analysis.example import RegionSelection, Vocabulary, from_store  # noqa: E402
from uniter_jax.analysis.grounding import named_region_shares  # noqa: E402
from uniter_jax.analysis.itm_scores import itm_margins, load_pretraining  # noqa: E402
from uniter_jax.analysis.mlm_image import image_use  # noqa: E402
from uniter_jax.data import scenes, synthetic  # noqa: E402
from uniter_jax.data.image_store import ImageStore  # noqa: E402
from uniter_jax.data.text_store import TextStore  # noqa: E402
from uniter_jax.downstream.baselines import vqa_type_prior  # noqa: E402

# How far each learned metric must clear its baselines (absolute).
MARGINS = {
    "itm_hard": 0.02,  # pairwise accuracy over the detector-label rule
    "mlm": 0.05,  # accuracy over the text-only n-gram predictor (and the control)
    "mrc": 0.05,  # accuracy over the strongest rule of MRC_RULES (and the control)
    "wra": 0.05,  # mismatched minus matched WRA distance
    "vqa_prior": 0.05,  # VQA accuracy over the per-question-type prior
    "vqa_scratch": 0.02,  # VQA accuracy over the same fine-tuning from scratch
}
# MRC's baselines: copying the most overlapping box, the class prior, the box
# prior, and copying where a box overlaps by IoU > 0.5 else the box prior.
MRC_RULES = ("mrc_copy", "mrc_prior", "mrc_box", "mrc_copy_box")
# Metrics that are accuracies, so no model can clear a baseline plus margin above 1
# (on siblings the copy rule is exact: MRC's bar is 1.05).
ACCURACIES = ("itm_hard", "mlm", "mrc", "vqa_prior", "vqa_scratch")
# The control's override: no attention between words and regions.
CROSS_MODAL = "model.cross_modal_attention"
SELECTION = RegionSelection()  # the pipeline's defaults: conf > 0.2, 10 to 100 regions


def max_regions(config: scenes.WorldConfig) -> int:
    """Regions of the fullest image, rounded up to a multiple of 4: the bucket's."""
    most = config.max_objects * config.regions_per_object + config.background_regions[1]
    return -(-most // 4) * 4


def main_py(workdir: str, config: str, overrides: dict, log: str) -> None:
    """Runs `main.py` to the end; raises with the log's tail if it fails."""
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    command = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", *flags]
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log) as f:
            raise RuntimeError(f"{' '.join(command)} failed:\n{f.read()[-3000:]}")


def run_once(workdir: str, config: str, overrides: dict, report: str, reuse: bool) -> None:
    """Runs `main.py` into `workdir`, recording its settings beside it first
    (`<workdir>.settings.json`). With `reuse`, a workdir whose `report` says
    it finished with the same settings is kept, and one that was interrupted
    (a preempted or failed run) is resumed; one from other settings, or
    whose settings were not recorded, is an error naming the keys."""
    settings = json.loads(json.dumps({"config": config, **overrides}, default=str))
    record = workdir + ".settings.json"
    if reuse and os.path.isdir(workdir):
        if not os.path.exists(record):
            raise RuntimeError(
                f"--reuse: {workdir} exists but {record} does not, so its settings are "
                "unknown; remove the folder or run without --reuse"
            )
        with open(record) as f:
            ran = json.load(f)
        differ = sorted(k for k in ran.keys() | settings.keys() if ran.get(k) != settings.get(k))
        if differ:
            raise RuntimeError(
                f"--reuse: {workdir} was run with other settings ({', '.join(differ)}); "
                "remove the folder, use another --out or run without --reuse"
            )
        if _finished(os.path.join(workdir, report)):
            return
    with open(record, "w") as f:
        json.dump(settings, f, indent=1)
    main_py(workdir, config, overrides, workdir + ".log")


def _finished(report: str) -> bool:
    """Whether the run report at `report` exists and says the run finished
    (an interrupted run's says "preempted")."""
    if not os.path.exists(report):
        return False
    with open(report) as f:
        return json.load(f).get("status") == "finished"


def pretrain_validation(
    workdir: str, preset: str, settings: dict, reuse: bool = False
) -> dict[str, float]:
    """Pretrains with `settings` into `workdir` (see `run_once` for `reuse`);
    the final validation metrics."""
    run_once(workdir, f"configs/pretrain.py:{preset}", settings, "pretrain_report.json", reuse)
    with open(os.path.join(workdir, "pretrain_report.json")) as f:
        return json.load(f)["validation"]


def hard_itm(model_dir: str, world: str) -> dict[str, float]:
    """Pairwise accuracy of the ITM margin on true captions against their hard negatives."""
    records = baselines.read_hard_negatives(os.path.join(world, synthetic.HARD_NEGATIVES))
    model = load_pretraining(model_dir)
    images = ImageStore(os.path.join(world, "images"))
    vocab = Vocabulary(os.path.join(world, "vocab.txt"))
    true = itm_margins(model, images, vocab, [(r["image_id"], r["text"]) for r in records])
    false = itm_margins(model, images, vocab, [(r["image_id"], r["negative"]) for r in records])
    return baselines.by_kind(records, baselines.pairwise_accuracy(true, false))


def validation_examples(
    world: str, max_texts: int, class_names: bool = False
) -> tuple[list, Vocabulary]:
    """The first `max_texts` validation captions of `world` with their images'
    regions (labelled with the detector's class names when `class_names`),
    and the world's vocabulary."""
    images = ImageStore(os.path.join(world, "images"))
    vocab = Vocabulary(os.path.join(world, "vocab.txt"))
    texts = TextStore(os.path.join(world, "texts", "captions_val"))
    names = None
    if class_names:
        names = scenes.label_names(images.get(str(texts.image_ids[0])).soft_labels.shape[-1])
    examples = [
        from_store(texts, images, i, vocab, selection=SELECTION, names=names)
        for i in range(min(len(texts), max_texts))
    ]
    return examples, vocab


def grounding(model_dir: str, world: str, max_texts: int = 400) -> dict:
    """How much of a word's region attention falls on the regions it names
    (`uniter_jax.analysis.grounding`), per layer and head, over the first
    `max_texts` validation captions; `best` is the best head of each layer."""
    model = load_encoder(model_dir)
    examples, _ = validation_examples(world, max_texts, class_names=True)
    region_names = [[label.split(": ", 1)[1] for label in e.labels] for e in examples]
    shares, uniform, tokens = named_region_shares(iter_inspect(model, examples), region_names)
    return {
        "shares": shares.tolist(),
        "best": shares.max(axis=1).tolist(),
        "uniform": uniform,
        "tokens": tokens,
    }


def attribute_kinds(vocab: Vocabulary) -> dict[int, str]:
    """The world's attribute words by id: colours, shapes (singular and
    plural) and sizes."""
    words = {"colour": scenes.COLOURS, "shape": scenes.SHAPES, "size": scenes.SIZES}
    kinds = {vocab.ids[w]: k for k, ws in words.items() for w in ws if w in vocab.ids}
    kinds.update({vocab.ids[w + "s"]: "shape" for w in scenes.SHAPES if w + "s" in vocab.ids})
    return kinds


def mlm_image(model_dir: str, world: str, max_texts: int = 600) -> dict:
    """MLM accuracy on each masked attribute word of the first `max_texts`
    validation captions, with the own image and with another
    (`uniter_jax.analysis.mlm_image`), per kind."""
    model = load_pretraining(model_dir)
    examples, vocab = validation_examples(world, max_texts)
    return image_use(model, examples, attribute_kinds(vocab), vocab.ids["[MASK]"])


def vqa_accuracy(workdir: str) -> float:
    with open(os.path.join(workdir, "finetune_vqa_report.json")) as f:
        return float(json.load(f)["validation"]["val/vqa/accuracy"])


def vqa_seeds(seed: int, runs: int) -> list[int]:
    """Fine-tuning seeds of a row: the world's seed first (a one-run row is
    unchanged), then steps of 100 so rows' seeds never meet."""
    return [seed + 100 * k for k in range(runs)]


def vqa_workdir(root: str, start_from: str, seed: int, first: int) -> str:
    """`vqa-pretrained` for the row's first seed (as before several seeds), else `-seedN`."""
    name = f"vqa-{start_from}" + ("" if seed == first else f"-seed{seed}")
    return os.path.join(root, name)


def run(
    name: str,
    seed: int,
    out: str,
    preset: str,
    steps: int,
    vqa_steps: int,
    overrides: dict[str, str] | None = None,
    control: bool = False,
    vqa_runs: int = 1,
    reuse: bool = False,
) -> dict:
    """One row: the world written, its baselines, pretraining (the preset with
    `overrides`, `--config.KEY=VALUE` each), hard-negative ITM and VQA. With
    `control`, also the same pretraining without attention between words and
    regions, whose MLM and MRC become baselines (what the text and the other
    regions give without grounding). VQA is fine-tuned `vqa_runs` times from
    each start, with different seeds; the row holds each run and their mean.
    With `reuse`, a run whose report is already under `out`, from the same
    settings, is read, not run again (to add fine-tuning seeds to a finished row)."""
    root = os.path.join(out, f"{name}-seed{seed}")
    world = os.path.join(root, "world")
    config = dataclasses.replace(scenes.WORLDS[name], seed=seed)
    start = time.perf_counter()
    synthetic.write_world(world, config, overwrite=True)
    texts = os.path.join(world, "texts")
    row: dict = {"world": name, "seed": seed, "probe": baselines.feature_probe(config)}
    row["baselines"] = baselines.world_baselines(world, SELECTION)
    row["baselines"]["vqa_type_prior"] = vqa_type_prior(
        TextStore(os.path.join(texts, "vqa_train")), TextStore(os.path.join(texts, "vqa_val"))
    )
    bucket = f"((16,{max_regions(config)},32),)"
    data = {"data.images": os.path.join(world, "images"), "data.buckets": bucket, "seed": seed}
    settings = {
        **data,
        "data.texts": os.path.join(texts, "captions_train"),
        "data.val_texts": os.path.join(texts, "captions_val"),
        "optim.total_steps": steps,
        "eval.every_steps": steps,
        "checkpoint.every_steps": steps,
        **(overrides or {}),
    }
    pretrain = os.path.join(root, "pretrain")
    row["pretrain"] = pretrain_validation(pretrain, preset, settings, reuse)
    if control:
        row["control"] = pretrain_validation(
            pretrain + "-control", preset, {**settings, CROSS_MODAL: False}, reuse
        )
    row["itm_hard"] = hard_itm(os.path.join(pretrain, "model"), world)
    row["grounding"] = grounding(os.path.join(pretrain, "model"), world)
    row["mlm_image"] = mlm_image(os.path.join(pretrain, "model"), world)
    vqa = {
        **data,
        "data.train_texts": os.path.join(texts, "vqa_train"),
        "data.val_texts": os.path.join(texts, "vqa_val"),
        "optim.total_steps": vqa_steps,
        "eval.every_steps": vqa_steps,
    }
    seeds, vqa_config = vqa_seeds(seed, vqa_runs), f"configs/finetune_vqa.py:{preset}"
    for start_from in ("pretrained", "scratch"):
        init = {"init_from": os.path.join(pretrain, "model")} if start_from == "pretrained" else {}
        runs = {}
        for run_seed in seeds:
            workdir = vqa_workdir(root, start_from, run_seed, seeds[0])
            finetune = {**vqa, **init, "seed": run_seed}
            run_once(workdir, vqa_config, finetune, "finetune_vqa_report.json", reuse)
            runs[run_seed] = vqa_accuracy(workdir)
        row[f"vqa_{start_from}_runs"] = runs
        row[f"vqa_{start_from}"] = float(np.mean(list(runs.values())))
    row["seconds"] = time.perf_counter() - start
    row["checks"] = checks(row)
    return row


def checks(row: dict) -> dict[str, dict]:
    """Each learned metric, the best baseline it must beat, the margin, the
    verdict and whether any accuracy could meet that bar (`reachable`)."""
    b, p = row["baselines"], row["pretrain"]
    wra_gap = p["val/itm/wra_mismatched"] - p["val/itm/wra_matched"]
    mlm_base, mrc_base = b["mlm_ngram"], max(b[rule] for rule in MRC_RULES)
    if "control" in row:
        mlm_base = max(mlm_base, row["control"]["val/mlm/accuracy"])
        mrc_base = max(mrc_base, row["control"]["val/mrc/accuracy"])
    rows = {
        "itm_hard": (row["itm_hard"]["all"], b["itm_rule"]["all"]),
        "mlm": (p["val/mlm/accuracy"], mlm_base),
        "mrc": (p["val/mrc/accuracy"], mrc_base),
        "wra": (wra_gap, 0.0),
        "vqa_prior": (row["vqa_pretrained"], b["vqa_type_prior"]),
        "vqa_scratch": (row["vqa_pretrained"], row["vqa_scratch"]),
    }
    return {
        name: {
            "value": value,
            "baseline": base,
            "margin": MARGINS[name],
            "pass": bool(value >= base + MARGINS[name]),
            "reachable": name not in ACCURACIES or base + MARGINS[name] <= 1.0,
        }
        for name, (value, base) in rows.items()
    }


def markdown(rows: list[dict]) -> str:
    """The checks (world x seed x metric x baseline), then the hard negatives
    by kind: the model's pairwise accuracy and the rule's."""
    lines = ["| world | seed | metric | value | baseline | margin | pass |", "|---" * 7 + "|"]
    for row in rows:
        for name, c in row["checks"].items():
            verdict = "yes" if c["pass"] else "**no**"
            if not c["reachable"]:
                verdict += " (bar above 1)"
            lines.append(
                f"| {row['world']} | {row['seed']} | {name} | {c['value']:.3f} | "
                f"{c['baseline']:.3f} | {c['margin']:.2f} | {verdict} |"
            )
    kinds = sorted({k for row in rows for k in row["itm_hard"] if k != "all"})
    lines += ["", "| world | seed | " + " | ".join(kinds) + " |", "|---" * (2 + len(kinds)) + "|"]
    for row in rows:
        model, b = row["itm_hard"], row["baselines"]
        # Rows written before the bag rule existed have no third number.
        rules = [b["itm_rule"]] + ([b["itm_bag"]] if "itm_bag" in b else [])
        cells = [
            " / ".join(f"{v[k]:.3f}" for v in (model, *rules)) if k in model else "" for k in kinds
        ]
        lines.append(f"| {row['world']} | {row['seed']} | " + " | ".join(cells) + " |")
    lines.append(
        "\nHard negatives by kind: the model's pairwise accuracy / the rule's / the "
        "attribute bag's (each attribute present somewhere, none bound: not a bar)."
    )
    lines += _measure_lines(
        rows,
        "grounding",
        "Words' attention on the regions they name (best head of each layer, first "
        "layer first; uniform attention gives the last number):",
        lambda g: ", ".join(f"{v:.3f}" for v in g["best"]) + f" (uniform {g['uniform']:.3f})",
    )
    lines += _measure_lines(
        rows,
        "mlm_image",
        "MLM on one masked attribute word, with the own image / another image's regions "
        "(equal: the word is guessed from the caption alone):",
        lambda m: ", ".join(f"{kind} {v['own']:.3f} / {v['other']:.3f}" for kind, v in m.items()),
    )
    several = [row for row in rows if len(row.get("vqa_pretrained_runs", {})) > 1]
    if several:
        lines.append("\nVQA by fine-tuning seed (the checks use the means):\n")
        for row in several:
            runs = [
                ", ".join(f"{v:.3f}" for v in row[f"vqa_{start}_runs"].values())
                for start in ("pretrained", "scratch")
            ]
            lines.append(f"- {row['world']} {row['seed']}: pretrained {runs[0]}; scratch {runs[1]}")
    return "\n".join(lines) + "\n"


def _measure_lines(rows: list[dict], key: str, title: str, cell) -> list[str]:
    """A titled list with one line per row that has `key` (older rows may not)."""
    measured = [row for row in rows if key in row]
    if not measured:
        return []
    lines = ["", title, ""]
    return lines + [f"- {row['world']} {row['seed']}: {cell(row[key])}" for row in measured]


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--worlds", default=",".join(scenes.WORLDS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--preset", default="tiny", help="configs/pretrain.py variant")
    parser.add_argument("--steps", type=int, default=0, help="pretraining updates; 0: the preset's")
    parser.add_argument(
        "--vqa-steps",
        type=positive,
        default=3000,
        help="VQA fine-tuning updates, from the pretrained weights and from scratch; at "
        "1,000 one run stayed at the per-type prior (docs/results.md, 'A phase of MRC alone')",
    )
    parser.add_argument(
        "--vqa-runs",
        type=positive,
        default=1,
        help="VQA fine-tuning runs from each start, each with its own seed; the "
        "checks compare their means (one run can sit at the prior: docs/results.md)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read the runs already under --out instead of running them again (e.g. to "
        "add --vqa-runs to a finished table); a run made with other settings is an error",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pretraining config override (repeatable), e.g. tasks.first_steps=2000",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also pretrain without attention between words and regions; its MLM and "
        "MRC become baselines (about doubles the time)",
    )
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    os.makedirs(args.out, exist_ok=True)
    if not args.steps:
        sys.path.insert(0, ROOT)
        from configs.pretrain import get_config

        args.steps = get_config(args.preset).optim.total_steps
    rows = []
    for name in args.worlds.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run(
                name,
                seed,
                args.out,
                args.preset,
                args.steps,
                args.vqa_steps,
                overrides,
                args.control,
                args.vqa_runs,
                args.reuse,
            )
            rows.append(row)
            print(markdown(rows[-1:]), flush=True)
            with open(os.path.join(args.out, "table.json"), "w") as f:
                json.dump(rows, f, indent=2, default=float)
    table = markdown(rows)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    return 0 if all(c["pass"] for r in rows for c in r["checks"].values()) else 1


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
