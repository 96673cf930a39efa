"""The shape of the library: short functions, imports at the top, packages that point one way."""
import ast
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "resdepth"
FIRST_PARTY = ("resdepth",)
# Optional heavy dependencies are imported where they are used, so that nobody pays for them
# unless asked: these first-party modules import one of them and may import inside functions.
MAX_FUNCTION_LINES = 60
# Lower packages first: a package may import only packages listed before it (and itself).
LAYERS = ["utils", "config", "dist", "data", "models", "diffusion", "train", "infer", "eval",
          "predict", "launch", "shards", "demo"]


def _modules():
    for path in sorted(LIB.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _package(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return parts[0] if len(parts) > 1 else parts[0]


def _is_parser(node: ast.AST) -> bool:
    return "parser" in node.name or node.name.endswith("_args") or node.name in ("cli", "main_cli")


def test_no_function_over_a_screen():
    long = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_parser(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def _first_party_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FIRST_PARTY:
                yield node, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FIRST_PARTY:
                    yield node, alias.name


def test_first_party_imports_at_module_top():
    inside = []
    for path, tree in _modules():
        top = set(map(id, tree.body))
        for node, name in _first_party_imports(tree):
            if id(node) not in top:
                inside.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not inside, "first-party imports inside functions or blocks:\n" + "\n".join(inside)


def test_packages_point_one_way():
    upward = []
    for path, tree in _modules():
        here = _package(path)
        if here not in LAYERS:
            continue
        for node, name in _first_party_imports(tree):
            parts = name.split(".")
            there = parts[1] if len(parts) > 1 else None
            if there in LAYERS and LAYERS.index(there) > LAYERS.index(here):
                upward.append(f"{path.relative_to(ROOT)}:{node.lineno} {here} imports {name}")
    assert not upward, "imports of a higher package:\n" + "\n".join(upward)


def test_training_package_size():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (LIB / "train").glob("*.py")}
    assert max(sizes.values()) <= 300, sizes
    assert sizes["loop.py"] < 250, sizes  # the step loop and the recipe around it


def test_only_resdepth_is_installed_at_the_top_level():
    try:
        dist = importlib.metadata.distribution("resdepth")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("resdepth is not installed")
    top = (dist.read_text("top_level.txt") or "resdepth").split()
    assert top == ["resdepth"], top
