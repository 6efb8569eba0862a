"""Integration: the chain's first stages on real CIFAR-10 images from ../shared (image-folder loader,
seeded train/val/test carved from one tree), a few short epochs. Skips when ../shared is absent."""

import json

import pytest

from conftest import SHARED, run, write_params

CIFAR_TREE = SHARED / "data" / "cifar10-test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CIFAR_TREE.is_dir(), reason=f"{CIFAR_TREE} not present (developer/CI data only)"),
]


def test_first_stages_on_real_cifar10_images(repo_copy):
    repo = repo_copy
    write_params(repo, {
        "data": {"name": "imagefolder", "root": str(CIFAR_TREE), "max_samples": 2000},
        "model": {"teacher": {"arch": "resnet20", "width": 0.5}, "student": {"arch": "resnet20", "width": 0.25}},
        "train": {"augment": {"hflip": True}},
        "teacher": {"epochs": 3}, "student": {"epochs": 3},
    })
    proc = run(["dvc", "repro", "distill"], repo)
    meta = json.loads((repo / "data" / "prepared" / "meta.json").read_text())
    assert meta["name"] == "imagefolder" and meta["num_classes"] == 10 and meta["split_source"] == "carved"
    assert meta["classes"][0] == "airplane" and sum(meta["splits"].values()) == 2000
    for name in ("teacher", "distill"):
        metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())
        # 3 short epochs on 1,400 training images: far from converged (measured here: teacher 0.28,
        # distilled width-0.25 student 0.17), but above chance (0.10) on real data.
        assert 0.12 < metrics["accuracy"] <= 1.0, metrics
    assert "Running stage 'student_baseline'" not in proc.stdout  # only distill's upstream ran
