"""params.yaml schema: every bad value is one line naming key, value and what is allowed, before any work."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgecompress import EdgecompressError
from edgecompress.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(dotted: str, value):
    data = copy.deepcopy(DEFAULTS)
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return data


def test_repo_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.distill.alpha == DEFAULTS["distill"]["alpha"]
    assert params.model.teacher.arch == DEFAULTS["model"]["teacher"]["arch"]


BAD_VALUES = [
    ("distill.alpha", 1.5, "must be a number in [0, 1]"),
    ("distill.alpha", -0.1, "must be a number in [0, 1]"),
    ("distill.temperature", 0, "must be a number > 0"),
    ("distill.temperature", "hot", "must be a number"),
    ("model.teacher.arch", "resnet7", "allowed: "),
    ("model.student.width", 0, "must be a number in (0, 8]"),
    ("data.name", "mnist", "allowed: "),
    ("data.image_size", 4, ">= 8"),
    ("data.val_fraction", 1.2, "(0, 1)"),
    ("teacher.epochs", -1, "must be an integer >= 0"),
    ("student.epochs", 0, "must be an integer >= 1"),
    ("student.epochs", 2.5, "must be an integer"),
    ("train.batch_size", 0, "must be an integer >= 1"),
    ("train.device", "tpu", "allowed: auto, cpu, cuda"),
    ("train.schedule", "linear", "allowed: cosine, step"),
    ("train.lr", -1, "must be a number > 0"),
    ("train.augment.rotation", 400, "[0, 180]"),
    ("prune.ratio", 1.0, "[0, 1)"),
    ("prune.ratio", -0.1, "[0, 1)"),
    ("prune.importance", "foo", "l1, l2, random, taylor"),
    ("prune.iterative_steps", 0, ">= 1"),
    ("prune.finetune_epochs", -1, ">= 0"),
    ("train.nproc", 0, "must be an integer >= 1"),
    ("train.augment.random_erasing", 1.5, "probability in [0, 1]"),
]


@pytest.mark.parametrize("key,value,allowed", BAD_VALUES)
def test_bad_value_is_one_line_naming_key_value_and_rule(key, value, allowed):
    with pytest.raises(EdgecompressError) as info:
        parse_params(with_value(key, value))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}={value!r} is invalid"), message
    assert allowed in message


def test_distributed_settings_are_checked_together():
    with pytest.raises(EdgecompressError, match=r"^train.batch_size=64 is invalid: must be divisible by train.nproc=5"):
        parse_params(with_value("train.nproc", 5))
    with pytest.raises(EdgecompressError, match=r"^train.rdzv_endpoint=None is invalid: must be host:port of node 0"):
        parse_params(with_value("train.nnodes", 2))
    assert parse_params(with_value("train.nproc", 2)).train.nproc == 2


def test_unknown_key_is_named():
    data = with_value("distill.alpah", 0.5)
    with pytest.raises(EdgecompressError, match=r"distill.alpah is not a known parameter.*alpha, temperature"):
        parse_params(data)


def test_prune_global_is_read_from_its_yaml_name():
    assert parse_params(with_value("prune.global", True)).prune.config().global_pruning is True


def test_dataset_with_missing_root_is_rejected():
    with pytest.raises(EdgecompressError, match="data.root=None"):
        parse_params(with_value("data.name", "cifar10"))


def test_every_dvc_params_key_exists_in_params_yaml():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage in dvc["stages"].values():
        for key in stage.get("params", []):
            node = DEFAULTS
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"dvc.yaml params key {key} missing in params.yaml"
                node = node[part]


@pytest.mark.parametrize("key,value", [("distill.alpha", 2.0), ("teacher.epochs", 0), ("train.device", "tpu")])
def test_stage_with_bad_params_touches_no_output(tmp_path, key, value):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value(key, value)))
    models = tmp_path / "models"
    models.mkdir()
    previous = models / "teacher.pt"
    previous.write_bytes(b"previous result")
    cmd = [sys.executable, str(ROOT / "stages" / "teacher.py"), "--data", "data/prepared", "--out",
           "models/teacher.pt", "--metrics", "metrics/teacher.json", "--plots", "plots/teacher",
           "--live", "dvclive/teacher"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: params.yaml: {key}={value!r} is invalid: " + lines[0].split("is invalid: ", 1)[1]]
    assert previous.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "params.yaml"]
