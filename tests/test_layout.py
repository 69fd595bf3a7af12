"""The package layout: imports point down the layers, modules stay small, names say what they hold.

Layers, lowest first (a module may import its own package and any lower layer, never a
sibling or a higher one; imports made only for type checking or inside functions count too):

    errors -> wire -> containers -> vmstate | sections | ram -> stream -> arch -> api -> outputs -> cli

``migstream/__init__.py``, ``__main__.py`` and ``compat.py`` are entry points above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "migstream"

RANK = {
    "errors": 0,
    "wire": 1,
    "containers": 2,
    "vmstate": 3,
    "sections": 3,
    "ram": 3,
    "stream": 4,
    "arch": 5,
    "api": 6,
    "outputs": 7,
    "compare": 7,
    "cli": 8,
}
ENTRY_POINTS = {"__init__", "__main__", "compat"}
MAX_LINES = 520


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(path: Path) -> list[tuple[int, str]]:
    """(line, layer) of every migstream module that ``path`` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(PACKAGE)
    package = list(rel.parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # "from . import x" at the top: x is a layer
                    names = [f"migstream.{a.name}" for a in node.names]
                else:
                    names = ["migstream." + ".".join(target)]
            elif node.module:
                names = [node.module]
                if node.module == "migstream":
                    names = [f"migstream.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "migstream" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_layers_are_known() -> None:
    unknown = {_layer(p) for p in _modules()} - set(RANK) - ENTRY_POINTS - {"py"}
    assert not unknown, f"modules outside the known layers: {sorted(unknown)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    me = _layer(path)
    if me in ENTRY_POINTS:
        return
    bad = []
    for line, other in _imported_layers(path):
        if other == me or other == "__version__":
            continue
        if other not in RANK:
            bad.append(f"line {line}: imports unknown layer {other}")
        elif RANK[other] >= RANK[me]:
            bad.append(f"line {line}: {me} (rank {RANK[me]}) imports {other} (rank {RANK[other]})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker itself: an upward import inside a function and under TYPE_CHECKING is found."""
    fake = PACKAGE / "ram" / "_layout_probe.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..api import Stream\n"
        "def f():\n    from migstream.outputs import info\n"
    )
    try:
        assert [layer for _line, layer in _imported_layers(fake)] == ["api", "outputs"]
    finally:
        fake.unlink()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"


def test_no_vague_module_names() -> None:
    vague = {"compat", "special", "builtin", "misc", "utils", "helpers", "common2"}
    found = [str(p.relative_to(PACKAGE)) for p in _modules() if p.stem in vague and p.parent != PACKAGE]
    assert not found, f"module names that do not say what they hold: {found}"
