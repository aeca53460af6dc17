"""The package's imports go one way: each part imports only the parts below it.

Every `import` in `uniter_jax/` is read from the source (module level,
inside functions and under `TYPE_CHECKING` alike), so an upward or cyclic
import cannot hide in a function body.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "uniter_jax"

# Bottom to top. A module may import its own part and the parts of lower
# layers; parts of one layer do not import each other (data code never sees
# the model, so it never needs flax).
LAYERS = (
    ("uniter_jax", "uniter_jax.host", "uniter_jax.seeds", "uniter_jax.sharding"),
    ("uniter_jax.data", "uniter_jax.model"),
    ("uniter_jax.objectives", "uniter_jax.param_checkpoint"),
    ("uniter_jax.convert",),
    ("uniter_jax.train",),
    ("uniter_jax.downstream",),
    ("uniter_jax.analysis", "uniter_jax.features"),
    ("uniter_jax.tools",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_names(root: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """`(imported module, line, inside a function)` for each uniter_jax import."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from package import module` imports the module itself.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno, id(node) in local))
    return found


def part(module: str) -> str:
    """The layer entry a module belongs to: its subpackage, or itself."""
    return max((p for p in RANK if module == p or module.startswith(p + ".")), key=len)


def graph(root: pathlib.Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    names = module_names(root)
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def problems(edges: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        for target, line, in_function in targets:
            here, there = part(module), part(target)
            where = f"{module}:{line} imports {target}"
            if in_function:
                found.append(f"{where} inside a function (import it at the top)")
            if here != there and RANK[there] >= RANK[here]:
                found.append(f"{where}: {there} is not below {here}")
    return found + cycles(edges)


def cycles(edges: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """One message per import cycle between modules (Tarjan's strongly connected parts)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                out.append(f"import cycle: {sorted(component)}")

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_part_of_the_package_has_a_layer():
    unplaced = [m for m in module_names() if not any(m == p or m.startswith(p + ".") for p in RANK)]
    assert not unplaced


def test_imports_go_down_and_never_in_a_circle():
    assert problems(graph()) == []


@pytest.mark.parametrize(
    "module, line, expected",
    [
        ("train/loop.py", "from uniter_jax.downstream import finetune", "is not below"),
        ("data/text_store.py", "from uniter_jax.model.config import ConfigError", "is not below"),
        ("train/state.py", "from uniter_jax.train import loop", "import cycle"),
        ("model/heads.py", "def f():\n    from uniter_jax import sharding", "inside a function"),
    ],
)
def test_a_planted_import_is_found(tmp_path, module, line, expected):
    copy = tmp_path / "uniter_jax"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    planted = copy / module
    planted.write_text(planted.read_text() + "\n" + line + "\n")
    found = problems(graph(copy))
    assert any(expected in p and module.replace("/", ".")[:-3] in p for p in found), found


def test_configs_do_not_import_tensorflow():
    """A config is read before anything runs (and by tools that only print it)."""
    code = (
        "import sys, configs.pretrain, configs.finetune_vqa, configs.finetune_retrieval; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_training_start_does_not_import_apache_beam():
    """Beam (an optional extra, over half a second to import) loads only when
    synthetic corpora are converted with it, not with the training code."""
    code = (
        "import sys, uniter_jax.train.pretrain, uniter_jax.train.loop; "
        "from uniter_jax.data import synthetic_corpora as s; "
        "print('apache_beam' in sys.modules, s.BEAM_INSTALLED)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, installed = out.stdout.split()
    assert loaded == "False"
    if installed == "True":  # the test extras install it: then it loads on use
        from uniter_jax.data import synthetic_corpora

        assert synthetic_corpora.beam_converters().__name__ == "uniter_jax.data.beam"
