"""dvc.yaml is the map and must be true: every stage of the four pipelines lists, in its deps, its own
script and every edgecompress source file that script imports, directly or transitively (a package
folder stands for its files). A dep list that misses one lets DVC keep a stale result after a change."""

from __future__ import annotations

import pytest

from imports import ROOT, Stage, files_needed, stages, uncovered

STAGES = stages()


def test_every_pipeline_is_read():
    assert {s.dvc_file.relative_to(ROOT).as_posix() for s in STAGES} == {
        "dvc.yaml", "pipelines/zoo/dvc.yaml", "pipelines/detection/dvc.yaml", "pipelines/finetune/dvc.yaml"}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s.dvc_file.parent.name}:{s.name}")
def test_stage_deps_cover_its_imports(stage: Stage):
    missing = [p.relative_to(ROOT).as_posix() for p in uncovered(stage)]
    assert not missing, f"{stage.dvc_file.relative_to(ROOT)}: stage {stage.name} does not list {missing}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s.dvc_file.parent.name}:{s.name}")
def test_stage_deps_list_no_code_it_does_not_run(stage: Stage):
    """An extra code dep re-runs the stage for changes that cannot affect it."""
    needed = {stage.script, *files_needed(stage.script)}
    extra = [d.relative_to(ROOT).as_posix() for d in stage.deps if d.suffix == ".py" and d not in needed]
    assert not extra, f"stage {stage.name} depends on code its script never imports: {extra}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s.dvc_file.parent.name}:{s.name}")
def test_stage_deps_exist(stage: Stage):
    absent = [d.relative_to(ROOT).as_posix() for d in stage.deps
              if d.is_relative_to(ROOT / "src") or d.is_relative_to(ROOT / "stages")
              if not d.exists()]
    assert not absent, f"stage {stage.name} depends on files that do not exist: {absent}"


def test_the_check_sees_transitive_imports(tmp_path):
    """The analysis itself: a stage script importing `edgecompress.classifier` needs train.py (imported by
    classifier) and the package's __init__.py, and a dep list without them is reported."""
    script = tmp_path / "stage.py"
    script.write_text("from edgecompress.classifier import train_classifier\n")
    needed = {p.relative_to(ROOT).as_posix() for p in files_needed(script)}
    assert {"src/edgecompress/__init__.py", "src/edgecompress/classifier.py", "src/edgecompress/train.py"} <= needed
    partial = Stage(ROOT / "dvc.yaml", "probe", script, (script, ROOT / "src/edgecompress/classifier.py"))
    assert ROOT / "src/edgecompress/train.py" in uncovered(partial)
    whole = Stage(ROOT / "dvc.yaml", "probe", script, (script, ROOT / "src/edgecompress"))
    assert uncovered(whole) == []
