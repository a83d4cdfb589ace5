"""The shape of the code: the dependency rules written in the packages' docstrings hold.

- ``target_dlac`` and ``passes`` never import ``compiler``;
- ``target_dlac``'s sub-packages import only the layers below them (``LAYERS``);
- ``passes`` imports only ``target_dlac.core`` and ``target_dlac.isa``; ``target_dlac``
  never imports ``passes``;
- no import cycle between modules (lazy imports inside functions included);
- no module of the project is over 450 lines.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("compiler", "passes", "target_dlac")
MAX_LINES = 450
#: known exceptions being removed by issue 12 (must end empty)
PENDING = {
}

#: What each layer of target_dlac may import (besides itself).
LAYERS = {
    "core": set(),
    "isa": {"core"},
    "binary": {"core", "isa"},
    "codegen": {"core", "isa", "binary"},
    "sim": {"core", "isa", "binary"},
    "tune": {"core", "isa", "binary", "codegen", "sim"},
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (resolved to modules)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t.split(".")[0] in PACKAGES:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if parts[0] == "target_dlac" and len(parts) > 1 and parts[1] in LAYERS else None


def test_every_target_dlac_module_is_in_a_layer():
    loose = [m for m in MODULES if m.startswith("target_dlac.") and _layer(m) is None]
    assert not loose, f"modules outside target_dlac's layers: {loose}"


@pytest.mark.parametrize("pkg", ["target_dlac", "passes"])
def test_no_import_of_compiler(pkg):
    bad = {m: sorted(i for i in deps if i.startswith("compiler"))
           for m, deps in GRAPH.items() if m.split(".")[0] == pkg}
    assert not {m: d for m, d in bad.items() if d}


def test_target_dlac_layers_point_down():
    bad = []
    for m, deps in GRAPH.items():
        lay = _layer(m)
        if lay is None:
            continue
        for d in deps:
            if d.startswith("passes"):
                if f"{m} -> {d}" not in PENDING:
                    bad.append(f"{m} -> {d} (target_dlac never imports passes)")
            dl = _layer(d)
            if dl is not None and dl != lay and dl not in LAYERS[lay]:
                bad.append(f"{m} -> {d} ({lay} may import {sorted(LAYERS[lay]) or 'nothing'})")
    assert not bad, "\n".join(bad)


def test_passes_import_only_core_and_isa():
    bad = [f"{m} -> {d}" for m, deps in GRAPH.items() if m.startswith("passes")
           for d in deps if _layer(d) not in (None, "core", "isa")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            # a package's __init__ re-exporting its own modules is not a cycle
            if m.startswith(d + ".") or d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                cyc = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cyc))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES
           and str(p.relative_to(ROOT)) not in PENDING}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
