"""The notebooks run top to bottom in a fresh kernel (nbclient), with small
settings injected after their parameters cell, as papermill does: 01 trains
a model into a temporary workdir, 02 and 03 read it. Running them takes
about 2.5 minutes, so those tests are `slow` (`make test-slow`, and CI)."""

import base64
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

import nbclient
import nbformat
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_quickstart", "02_inspect", "03_finetune_vqa", "04_own_image")


def read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def execute(name, **parameters):
    """Runs notebook `name` with `parameters` overriding its parameters cell;
    returns the executed notebook. A failing cell raises CellExecutionError
    with the cell's traceback."""
    nb = read(name)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: one cell must be tagged 'parameters'"
    overrides = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(overrides))
    # One CPU device, as on a laptop or Colab (the tests' 8 forced devices would
    # split the tiny batches 8 ways).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(env=env)
    return nb


def pictures(nb):
    """The PNG images the executed notebook displayed, as PIL images."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                found.append(Image.open(io.BytesIO(base64.b64decode(data["image/png"]))))
    return found


def text_of(nb):
    return "".join(
        output.get("text", "") + "".join(output.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebooks_are_clean(name):
    """No outputs or execution counts in git, every cell has an id, Colab-ready metadata."""
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        assert "id" in cell
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.metadata.kernelspec.name == "python3"


def setup_cell(name):
    """The first code cell's Python (IPython magics dropped)."""
    cell = next(c for c in read(name).cells if c.cell_type == "code")
    return "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))


def test_every_notebook_starts_with_the_same_setup_cell():
    first = setup_cell(NAMES[0])
    assert "find_repository" in first and "missing_requirements" in first
    assert all(setup_cell(name) == first for name in NAMES)


# What a fresh Colab runtime lacks of requirements.txt (it has jax, flax,
# optax and tensorflow): packages and distributions, as site-packages names them.
NOT_ON_COLAB = {"ott", "ott_jax", "clu"}
# This venv's own tools and its editable install of the repository.
NOT_SHARED = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "__editable__", "uniter_jax")


def colab_like_python(tmp_path):
    """A new venv that sees this venv's distributions (by a path entry to a
    folder of links), except NOT_ON_COLAB: pip then installs just those, where
    installing everything into a bare venv took two minutes."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    ours = pathlib.Path(sysconfig.get_paths()["purelib"])
    shared = tmp_path / "preinstalled"
    shared.mkdir()
    for entry in ours.iterdir():
        name = entry.name
        if entry.suffix == ".pth" or name.startswith(NOT_SHARED):
            continue
        if name.split("-")[0] in NOT_ON_COLAB:  # clu, clu-0.0.12.dist-info
            continue
        (shared / name).symlink_to(entry)
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "preinstalled.pth").write_text(f"{shared}\n")
    return str(venv / "bin" / "python")


@pytest.mark.slow
def test_setup_cell_installs_into_a_fresh_python_and_clones_outside_a_copy(tmp_path):
    """On a Python that lacks some of our requirements, the first cell installs
    them, inside a copy of the repository and, cloned, outside one. Not the
    project's venv: there every module is already importable and the install
    never runs."""
    python = colab_like_python(tmp_path)
    probe = "\nimport ott, clu, uniter_jax.model\nprint('uniter_jax from', uniter_jax.__file__)\n"
    code = setup_cell(NAMES[0]) + probe
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(cwd, **extra):
        return subprocess.run(
            [python, "-c", code], cwd=cwd, env={**env, **extra}, capture_output=True, text=True
        )

    inside = run(NOTEBOOKS)
    assert inside.returncode == 0, inside.stderr[-3000:]
    assert "installing requirements.txt; missing: ott-jax clu\n" in inside.stdout
    assert f"repository: {ROOT}" in inside.stdout
    assert f"uniter_jax from {ROOT}" in inside.stdout

    colab = tmp_path / "content"
    colab.mkdir()
    nowhere = run(colab)
    assert nowhere.returncode != 0 and "set REPOSITORY" in nowhere.stderr
    cloned = run(colab, UNITER_JAX_REPOSITORY=str(ROOT))
    assert cloned.returncode == 0, cloned.stderr[-3000:]
    assert "installing" not in cloned.stdout  # the first run installed everything
    assert f"uniter_jax from {colab / 'uniter_jax'}" in cloned.stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("notebooks") / "quickstart"
    nb = execute(
        "01_quickstart",
        WORKDIR=str(workdir),
        SYNTHETIC_IMAGES=200,
        STEPS=8,
        LOG_EVERY=4,
        EVAL_EVERY=8,
    )
    return workdir, nb


@pytest.mark.slow
def test_quickstart_trains_and_plots(quickstart):
    workdir, nb = quickstart
    report = json.loads((workdir / "pretrain_report.json").read_text())
    assert report["status"] == "finished" and report["step"] == 8
    assert (workdir / "model" / "model_config.json").exists()
    # The world's regions and the training curves.
    assert len(pictures(nb)) == 2
    assert "val/itm/accuracy" in text_of(nb)


def documented_scalars():
    """README's TensorBoard table as patterns (`<task>`, `<metric>` are placeholders)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Watching a run") : readme.index("## Notebooks and pictures")]
    names = re.findall(r"`((?:train|val)/[^`]+|steps_per_sec|uptime)`", table)
    assert len(names) > 10, names
    placeholders = {re.escape("<task>"): "[a-z0-9_]+", re.escape("<metric>"): "[a-z0-9_/]+"}
    patterns = []
    for name in names:
        pattern = re.escape(name)
        for placeholder, value in placeholders.items():
            pattern = pattern.replace(placeholder, value)
        patterns.append(re.compile(pattern + "$"))
    return patterns


@pytest.mark.slow
def test_every_logged_scalar_is_documented_in_the_readme(quickstart):
    from tensorboard.backend.event_processing import event_accumulator

    workdir, _ = quickstart
    (events,) = workdir.glob("events.out.tfevents.*")
    accumulator = event_accumulator.EventAccumulator(str(events))
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"] + accumulator.Tags()["scalars"]
    assert "train/itm/wra_matched" in tags and "val/mlm/accuracy" in tags
    patterns = documented_scalars()
    undocumented = [t for t in tags if not any(p.match(t) for p in patterns)]
    assert not undocumented, f"logged but not in README's TensorBoard table: {undocumented}"


@pytest.mark.slow
def test_inspect_draws_every_layer_patterns_and_alignment(quickstart):
    workdir, _ = quickstart
    nb = execute(
        "02_inspect",
        CHECKPOINT=str(workdir / "model"),
        WORLD=str(workdir / "synthetic"),
        PATTERN_EXAMPLES=8,
    )
    # tiny: 2 attention figures, the pattern summary, the heatmap, the boxes.
    sizes = [image.size for image in pictures(nb)]
    assert len(sizes) == 5, sizes
    assert all(w > 300 and h > 200 for w, h in sizes), sizes
    assert "pattern" in text_of(nb)


@pytest.mark.slow
def test_finetune_vqa_beats_nothing_but_runs_and_shows_predictions(quickstart, tmp_path):
    workdir, _ = quickstart
    nb = execute(
        "03_finetune_vqa",
        PRETRAINED=str(workdir / "model"),
        WORLD=str(workdir / "synthetic"),
        WORKDIR=str(tmp_path / "vqa"),
        STEPS=6,
        EVAL_EVERY=6,
        SHOW=3,
    )
    results = json.loads((tmp_path / "vqa" / "results_vqa_val.json").read_text())
    assert results and set(results[0]) == {"question_id", "answer"}
    assert "VQA accuracy" in text_of(nb)
    assert len(pictures(nb)) == 2  # the curves and the predictions with their regions


@pytest.mark.slow
def test_own_image_draws_regions_and_scores_the_sentence(quickstart, tmp_path):
    """With no weights: a random detector as wide as 01's model's region
    features, said on the picture and in the text; a made-up picture."""
    workdir, _ = quickstart
    out = tmp_path / "own"
    nb = execute(
        "04_own_image",
        CHECKPOINT=str(workdir / "model"),
        VOCAB=str(workdir / "synthetic" / "vocab.txt"),
        WORKDIR=str(out),
        NUM_BOXES=5,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["itm"]["probability"] <= 1.0
    assert len(summary["regions"]) == 5 and "random" in summary["detector"]
    text = text_of(nb)
    assert "RANDOM DETECTOR WEIGHTS" in text and "ITM P(match)" in text
    # The regions, the WRA plan on the boxes and as a heatmap, the last layer's attention.
    sizes = [image.size for image in pictures(nb)]
    assert len(sizes) == 4 and all(w > 300 and h > 200 for w, h in sizes), sizes
    assert (out / "made_up.png").exists() and (out / "regions.png").exists()
