"""The studies under docs/experiments are the commands behind the README's tables: they must keep
importing what they use from the library as modules move (running them needs ../shared and minutes)."""

import ast
import importlib
from pathlib import Path

import pytest

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "docs" / "experiments").glob("*.py"))


def library_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from edgecompress... import name` in a file."""
    return [(node.module, alias.name) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "edgecompress"
            for alias in node.names]


def resolves(module: str, name: str) -> bool:
    if hasattr(importlib.import_module(module), name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_imports_resolve(path: Path) -> None:
    missing = [f"{module}.{name}" for module, name in library_imports(path) if not resolves(module, name)]
    assert not missing, f"{path.name} imports what the library no longer has: {missing}"


def test_a_moved_name_is_caught(tmp_path: Path) -> None:
    study = tmp_path / "study.py"
    study.write_text("from edgecompress.zoo import weights\nfrom edgecompress import weights as w\n")
    assert [resolves(m, n) for m, n in library_imports(study)] == [False, True]
