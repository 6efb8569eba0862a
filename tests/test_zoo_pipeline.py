"""End to end: `dvc repro pipelines/zoo/dvc.yaml` with random weights (clearly labelled) on a tiny
image tree — it succeeds with no CIFAR-100 anywhere (fine-tuning is opt-in) — then the opt-in
`dvc repro pipelines/finetune/dvc.yaml` on a tiny CIFAR-100-format data set the test writes: every
output file is produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import deep_update, run
from test_finetune import write_cifar100

pytestmark = pytest.mark.slow

WNIDS = ("n01440764", "n01443537", "n01484850")


def write_image_tree(root: Path, per_class: int) -> Path:
    for c, wnid in enumerate(WNIDS):
        for k in range(per_class):
            (root / wnid).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (40 * c, 20 * k, 200)).save(root / wnid / f"{k}.JPEG")
    return root


def test_zoo_pipeline_smoke_run_random_weights(repo_copy: Path, tmp_path: Path) -> None:
    images = write_image_tree(tmp_path / "imagenet-tiny", per_class=2)
    cifar = write_cifar100(tmp_path / "cifar", num_classes=5, train_per_class=4, test_per_class=2)
    params_path = repo_copy / "pipelines" / "zoo" / "params.yaml"
    params = deep_update(yaml.safe_load(params_path.read_text()), {
        "zoo": {"images": str(images), "max_images": 3, "warmup": 0, "repeats": 3, "threads": 1,
                "batch_sizes": [1, 2], "static_batch_size": 2, "calibration_batches": 1, "calibration_batch_size": 2, "eval_batch_size": 2,
                # torch.compile has its own tests (test_bench); here the exported runtimes, at two batch sizes
                "runtimes": ["onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8"], "runtime_batch_sizes": [1, 2],
                "runtimes_on": "all", "dynamic": True, "static": ["vnni"],  # x86 & co: test_zoo
                "max_accuracy_drop": 100.0,  # the gate measured and recorded; no fallback search (own test)
                "gate_images": 1,  # ... on an image of its own: neither evaluated nor calibrated with
                "max_load": None},  # a busy CI runner must not make the suite wait (test_zoo_contention)
    })
    params["zoo"]["models"] = {"mobilenet_v3_small": "random"}  # one model: the stages' loops are the same per model
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    finetune_params = repo_copy / "pipelines" / "finetune" / "params.yaml"
    finetune_params.write_text(yaml.safe_dump(deep_update(yaml.safe_load(finetune_params.read_text()), {
        "finetune": {"arch": "mobilenet_v3_small", "weights": "random", "train_stages": ["classifier"], "epochs": 1,
                     "data": {"root": str(cifar), "val_fraction": 0.25},
                     "train": {"device": "cpu", "batch_size": 8, "amp": False}}}), sort_keys=False))

    run(["dvc", "repro", "pipelines/zoo/dvc.yaml"], repo_copy, timeout=900)  # no CIFAR-100 needed (issue 16)
    run(["dvc", "repro", "pipelines/finetune/dvc.yaml"], repo_copy, timeout=900)

    zoo_dir = repo_copy / "pipelines" / "zoo"
    zoo = json.loads((zoo_dir / "metrics" / "zoo.json").read_text())
    assert set(zoo["models"]) == {"mobilenet_v3_small"} and zoo["images"]["count"] == 3
    assert zoo["random_weights"] == ["mobilenet_v3_small"]
    assert all(entry["weights"].startswith("random") for entry in zoo["models"].values())
    quant = json.loads((zoo_dir / "metrics" / "zoo_quantize.json").read_text())
    assert quant["calibration"]["images"] == 2 and quant["images"]["count"] == 3
    assert quant["gate"] == {"budget_points": 100.0, "images": 1,
                             "source": "the images after the calibration ones (never evaluated nor calibrated with)"}
    small = quant["models"]["mobilenet_v3_small"]
    assert set(small["fp32"]["latency_ms"]) == {"1", "2"}  # FP32 re-timed beside its quantized versions
    assert zoo["contention"]["max_load"] is None and quant["contention"]["contended"] == []  # not monitored here
    assert small["dynamic"]["layers"]["quantized_layers"] == {"Linear": 2}
    assert small["dynamic"]["layers"]["float_layers"]["Conv2d"] > 0
    for entry in quant["models"].values():
        assert set(entry["static"]) == {"vnni"}
        runtimes = entry["runtimes"]
        assert set(runtimes) == {"onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8"}
        for name in ("onnx_fp32", "openvino_fp32"):  # the FP32 exports compute what eager computes
            assert runtimes[name]["top1_agreement"] == 1.0 and runtimes[name]["sqnr_db"] > 40, name
        for name in ("onnx_int8", "openvino_int8"):
            assert runtimes[name]["layers"]["quantized"] > 0 and set(runtimes[name]["latency_ms"]) == {"1", "2"}
            gate = runtimes[name]["gate"]
            assert gate["met"] and gate["judged_on"] == "1 gate image" and gate["float_layers"] == []
    finetune_dir = repo_copy / "pipelines" / "finetune"
    finetune = json.loads((finetune_dir / "metrics" / "finetune_cifar100.json").read_text())
    assert finetune["weights"].startswith("random") and finetune["arch"] == "mobilenet_v3_small"
    for plot in ("zoo_accuracy_vs_latency", "batch_size_analysis_combined", "static_quant_analysis"):
        assert (zoo_dir / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot
    assert (finetune_dir / "plots" / "finetune_cifar100" / "training_curves.png").is_file()
    assert (finetune_dir / "models" / "finetune_cifar100.pt").is_file()
    report = (zoo_dir / "REPORT.md").read_text()
    assert "Random weights (untrained): mobilenet_v3_small" in report
    assert "mobilenet_v3_small (random weights)" in report and "plots/static_quant_analysis.png" in report
    assert "## Runtimes: INT8 against the fastest FP32 runtime" in report and "openvino_int8" in report
    assert "Contention was not monitored (zoo.max_load: null)." in report
    assert "up to date" in run(["dvc", "repro", "pipelines/zoo/dvc.yaml"], repo_copy).stdout
