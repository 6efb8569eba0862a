"""What a file of this repository imports from edgecompress, read statically with `ast` (nothing is
run): shared by the dvc.yaml dependency test and the layering test. `python tests/imports.py` prints,
for every stage of the three dvc.yaml files, the source files its script needs."""

from __future__ import annotations

import ast
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "edgecompress"
DVC_FILES = ("dvc.yaml", "pipelines/zoo/dvc.yaml", "pipelines/detection/dvc.yaml", "pipelines/finetune/dvc.yaml")


@dataclass(frozen=True)
class Import:
    module: str  # dotted edgecompress module (or package) name
    line: int
    in_function: bool


def module_file(module: str) -> Path | None:
    """The file that defines `module` (a package's __init__.py), or None when it is not a module."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    """Dotted name of a file under src/ (a package's __init__.py names the package)."""
    parts = path.resolve().relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edgecompress_imports(path: Path) -> list[Import]:
    """Every edgecompress module a file imports, at module level or inside functions. `from
    edgecompress.a import b` names `edgecompress.a.b` when b is a module, else `edgecompress.a`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}") else node.module
                     for a in node.names]
        for name in names:
            if name == "edgecompress" or name.startswith("edgecompress."):
                found.append(Import(name, node.lineno, id(node) in functions))
    return found


@lru_cache(maxsize=None)
def files_needed(path: Path) -> frozenset[Path]:
    """The edgecompress source files that running `path` executes: its imports, transitively, plus
    the __init__.py of every package on the way (importing a.b.c runs a, a.b and a.b.c)."""
    needed: set[Path] = set()
    pending = [path]
    while pending:
        current = pending.pop()
        for imp in edgecompress_imports(current):
            parts = imp.module.split(".")
            for depth in range(1, len(parts) + 1):
                target = module_file(".".join(parts[:depth]))
                if target is not None and target not in needed:
                    needed.add(target)
                    pending.append(target)
    return frozenset(needed)


@dataclass(frozen=True)
class Stage:
    dvc_file: Path
    name: str
    script: Path
    deps: tuple[Path, ...]


def stages() -> list[Stage]:
    """Every stage of the four pipelines with its script (the `python <script>` of its cmd) and deps,
    as absolute paths (dvc.yaml paths are relative to the file's folder)."""
    out = []
    for rel in DVC_FILES:
        dvc_file = ROOT / rel
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            words = shlex.split(stage["cmd"])
            script = next(w for w in words if w.endswith(".py"))
            deps = tuple((dvc_file.parent / d).resolve() for d in stage.get("deps", []) if "${" not in d)
            out.append(Stage(dvc_file, name, (dvc_file.parent / script).resolve(), deps))
    return out


def uncovered(stage: Stage) -> list[Path]:
    """Files the stage's script needs (itself included) that no dep lists (a folder covers its files)."""
    needed = {stage.script, *files_needed(stage.script)}
    return sorted(p for p in needed if not any(p == d or d in p.parents for d in stage.deps))


if __name__ == "__main__":
    for st in stages():
        rel = st.dvc_file.parent
        files = sorted({st.script, *files_needed(st.script)})
        print(f"{st.dvc_file.relative_to(ROOT)}:{st.name}")
        for f in files:
            print(f"      - {Path(*(['..'] * len(rel.relative_to(ROOT).parts)), f.relative_to(ROOT)).as_posix()}")
    sys.exit(0)
