"""The package's layers point down only, and importing a module only defines things.

Read from the source (every import statement, the ones inside functions included), so an arrow that points up
fails here even where no test happens to run the line that holds it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import phicenter

PACKAGE = Path(phicenter.__file__).parent

# Lowest first. A unit imports its own modules and those of lower layers, never one of its own layer or above.
LAYERS = [
    {"__init__", "spec", "io"},  # plain Python the rest stands on
    {"targets"},  # model=custom, dataset=custom: the user's code by dotted path
    {"method"},  # polarity, masks, pruning, strategies: plain torch
    {"data", "models", "loggers"},
    {"config", "ticket"},
    {"engine"},  # the round loop (Lightning)
    {"analysis"},
    {"train", "report", "bench", "export", "store"},  # the commands
    {"cli"},  # `phicenter COMMAND`: the console script over the commands
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """phicenter.engine.loop -> engine; phicenter.train -> train; phicenter -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, package: Path = PACKAGE) -> list[tuple[str, int]]:
    """(phicenter module, line) of every import in a module's source (`from phicenter import CONF_DIR`: the
    package's __init__)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "phicenter":  # from phicenter import data, models
                out += [
                    (f"phicenter.{a.name}" if _is_module(package, a.name) else "phicenter", node.lineno)
                    for a in node.names
                ]
            else:
                out.append((node.module, node.lineno))
    return [(m, line) for m, line in out if m == "phicenter" or m.startswith("phicenter.")]


def _is_module(package: Path, name: str) -> bool:
    return (package / name).is_dir() or (package / f"{name}.py").is_file()


def arrows(package: Path = PACKAGE) -> list[str]:
    """'file:line: a -> b' for each import that points to a unit of the same layer or above."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        src = unit_of(module_name(path, package))
        for module, line in imported(ast.parse(path.read_text()), package):
            dst = unit_of(module)
            if dst != src and RANK.get(dst, len(LAYERS)) >= RANK[src]:
                bad.append(f"{path.relative_to(package)}:{line}: {src} -> {dst}")
    return bad


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"


def test_imports_point_down_only():
    assert arrows() == []


def test_an_arrow_up_is_seen(tmp_path):
    """The check itself: a method module that imports the engine, even inside a function, is reported."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "x.py").write_text("def f():\n    from phicenter.engine import loop\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "y.py").write_text("from phicenter.models import build\nfrom phicenter.method import x\n")
    assert arrows(tmp_path) == ["data/y.py:1: data -> models", "method/x.py:2: method -> engine"]


DEFINITIONS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


def _runs_at_import(tree: ast.Module) -> list[int]:
    """Lines of top-level statements that do something rather than define something (a docstring, and the
    `if __name__ == "__main__":` of a command, excepted)."""
    lines = []
    for i, node in enumerate(tree.body):
        if isinstance(node, DEFINITIONS):
            continue
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            continue
        lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_importing_only_defines(path):
    assert _runs_at_import(ast.parse(path.read_text())) == [], path


def test_a_statement_run_at_import_is_seen():
    tree = ast.parse('"""doc"""\nimport logging\nlogging.getLogger("x").setLevel(10)\nfor n in ():\n    pass\n')
    assert _runs_at_import(tree) == [3, 4]


MODULE_LINES, FUNCTION_LINES = 400, 60  # a module and a function that fit in a head


def test_modules_and_functions_fit_in_a_head():
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MODULE_LINES:
            long_modules.append(f"{path.relative_to(PACKAGE)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)")
    assert long_modules == [] and long_functions == []
