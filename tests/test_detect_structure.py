"""Static checks of the detection pipeline's structure (no project code is run): each stage of
pipelines/detection/dvc.yaml depends on exactly its script and the src/edgecompress modules the script
imports, directly or not, and `edgecompress.detection` keeps to its layer."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PIPELINE = ROOT / "pipelines" / "detection"


def module_files() -> dict[str, Path]:
    out = {}
    for path in (SRC / "edgecompress").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_files()


def imported(path: Path) -> set[str]:
    """edgecompress modules a file imports anywhere (function level too), with their parent packages."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES}
    return out


def closure(path: Path) -> set[str]:
    seen, todo = set(), list(imported(path))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported(MODULES[name])
    return seen


def test_every_stage_depends_on_exactly_the_modules_it_imports() -> None:
    stages = yaml.safe_load((PIPELINE / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = ROOT / "stages" / f"{name}.py"
        wanted = {script} | {MODULES[m] for m in closure(script)}
        code_deps = {(PIPELINE / d).resolve() for d in stage["deps"]
                     if d.startswith(("../../src/", "../../stages/"))}
        assert code_deps == {p.resolve() for p in wanted}, name


def test_detection_imports_the_core_and_nothing_imports_detection_but_stages() -> None:
    for name, path in MODULES.items():
        deps = imported(path)
        if name.startswith("edgecompress.detection"):
            assert not {d for d in deps if d.startswith(("edgecompress.zoo", "edgecompress.params",
                                                         "edgecompress.report"))}, name
        else:
            assert not {d for d in deps if d.startswith("edgecompress.detection")}, name
    # the schema stays light: params reads the families' data, never the model code
    assert imported(MODULES["edgecompress.detection.params"]) & {"edgecompress.detection.models",
                                                                  "edgecompress.runtime"} == set()
