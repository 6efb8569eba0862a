"""Stage check_params: a bad or unknown param stops `dvc repro` before DVC removes any other stage's
outputs (issue 16), in every pipeline; a valid edit re-runs the check and leaves its output unchanged."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tool_env, write_params
from edgecompress.config import load_settings

SCRIPT = ROOT / "stages" / "check_params.py"
PIPELINES = {"chain": "dvc.yaml", "zoo": "pipelines/zoo/dvc.yaml", "detection": "pipelines/detection/dvc.yaml",
             "finetune": "pipelines/finetune/dvc.yaml"}


def check(params: Path, out: Path, pipeline: str = "chain") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--pipeline", pipeline, "--params", str(params),
                           "--out", str(out)], capture_output=True, text=True, env=tool_env())


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every file of the working tree except git's and DVC's own state."""
    return {str(path.relative_to(repo)): path.read_bytes() for path in repo.rglob("*")
            if path.is_file() and not {".git", ".dvc"} & set(path.relative_to(repo).parts)}


def load_script():
    spec = importlib.util.spec_from_file_location("check_params", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_committed_params_are_valid_and_the_output_is_constant(tmp_path, monkeypatch, pipeline):
    folder = ROOT / Path(PIPELINES[pipeline]).parent
    load_settings(folder / "params.yaml", load_script().SCHEMAS[pipeline])
    monkeypatch.setattr(sys, "argv", ["check_params.py", "--pipeline", pipeline, "--params",
                                      str(folder / "params.yaml"), "--out", str(tmp_path / "ok.json")])
    load_script().main()
    assert (tmp_path / "ok.json").read_bytes() == (folder / "metrics" / "params_check.json").read_bytes()


def test_a_bad_param_is_one_line_and_nothing_is_written(tmp_path):
    change, expected = {"train": {"lr": float("inf")}}, "train.lr"
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    write_params(tmp_path, change)
    proc = check(params, tmp_path / "ok.json")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "ok.json").exists()


def test_every_stage_depends_on_the_check():
    for pipeline, rel in PIPELINES.items():
        stages = yaml.safe_load((ROOT / rel).read_text())["stages"]
        assert stages["check_params"]["cmd"].split()[1].endswith("stages/check_params.py")
        assert "params.yaml" in stages["check_params"]["deps"], pipeline
        for name, stage in stages.items():
            if name != "check_params":
                assert "metrics/params_check.json" in stage["deps"], (pipeline, name)


@pytest.mark.parametrize(("dvc_file", "change", "expected"), [
    ("dvc.yaml", {"bench": {"batch_sizes": []}}, "bench.batch_sizes"),
    ("dvc.yaml", {"benchh": {"repeats": 3}}, "benchh"),
    ("pipelines/detection/dvc.yaml", {"detection": {"subset_images": 0}}, "detection.subset_images"),
])
def test_dvc_repro_with_a_bad_param_leaves_every_output_byte_identical(repo_copy, dvc_file, change, expected):
    repo = repo_copy
    write_params(repo / Path(dvc_file).parent, change)
    before = snapshot(repo)
    proc = subprocess.run(["dvc", "repro", dvc_file], cwd=repo, capture_output=True, text=True, env=tool_env())
    assert proc.returncode != 0 and expected in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Running stage '") and "check_params':" in proc.stdout.splitlines()[0]
    assert proc.stdout.count("Running stage") == 1, proc.stdout  # nothing after the check
    after = snapshot(repo)
    check_output = str(Path(dvc_file).parent / "metrics" / "params_check.json")
    assert set(before) - set(after) == {check_output}  # DVC removed the check's own output, nothing else
    assert {path: data for path, data in before.items() if path != check_output} == after
