"""The package's layers, read from its imports with `ast`: imports only point down.

    core           io, config, stage, runtime, markdown, plots, goals, distributed, data, datasets,
                   models, weights, efficientnet_lite, transfer, init_weights, train, distill, prune,
                   classifier (and the package __init__)
    method layer   quantize/ (core only), bench/ (core, quantize), report/ (core, quantize, bench)
    chain schema   params.py (core and the method layer)
    pipelines      zoo/, detection/ (core and the method layer; never each other, never params.py)

Nothing in the library imports stages/ or tests/, and an edgecompress import inside a function (a way
to hide a cycle) is refused: only heavy optional third-party packages are imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imports import PACKAGE, ROOT, edgecompress_imports, module_name

CORE = {"edgecompress", "io", "config", "stage", "runtime", "markdown", "plots", "goals", "distributed", "data",
        "datasets", "models", "weights", "efficientnet_lite", "transfer", "init_weights", "train", "distill", "prune",
        "classifier"}
ALLOWED = {  # layer -> layers it may import
    "core": {"core"},
    "quantize": {"core", "quantize"},
    "bench": {"core", "quantize", "bench"},
    "report": {"core", "quantize", "bench", "report"},
    "params": {"core", "quantize", "bench", "params"},
    "zoo": {"core", "quantize", "bench", "zoo"},
    "detection": {"core", "quantize", "bench", "detection"},
}


def layer(module: str) -> str:
    """The layer of a dotted edgecompress module name."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "edgecompress"
    if top in CORE:
        return "core"
    if top in ALLOWED:
        return top
    raise AssertionError(f"{module}: no layer assigned; add it to tests/test_layers.py")


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_down(path: Path):
    own = layer(module_name(path))
    bad = [f"line {imp.line}: {imp.module} ({layer(imp.module)})" for imp in edgecompress_imports(path)
           if layer(imp.module) not in ALLOWED[own]]
    assert not bad, f"{path.relative_to(ROOT)} ({own}) imports above or beside its layer: {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_edgecompress_import_inside_functions(path: Path):
    lazy = [f"line {imp.line}: {imp.module}" for imp in edgecompress_imports(path) if imp.in_function]
    assert not lazy, f"{path.relative_to(ROOT)} imports edgecompress modules inside functions: {lazy}"


def test_no_import_cycle():
    graph = {module_name(p): {imp.module for imp in edgecompress_imports(p)} for p in SOURCES}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_the_check_catches_an_upward_import(tmp_path):
    """The walker itself: an `from edgecompress.zoo...` in a core-layer file is reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("from edgecompress.zoo.params import ZooParams\nfrom edgecompress import io\n")
    layers = {layer(imp.module) for imp in edgecompress_imports(probe)}
    assert layers == {"zoo", "core"} and not layers <= ALLOWED["core"]
