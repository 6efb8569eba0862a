"""quantize.gate: the validation drop of every INT8 variant, the float fallback through each backend's own
layer names (FX modules, ONNX Runtime nodes_to_exclude, NNCF ignored scope), and the gate's failure
leaving the quantize stage's previous outputs in place."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.data import prepare_dataset
from edgecompress.models import build_model, save_checkpoint
from edgecompress.quantize import gate
from edgecompress.quantize.artifacts import artifact_layer_summary, build_variant, load_artifact
from edgecompress.quantize.config import QuantizeConfig

from conftest import ROOT


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


@pytest.mark.parametrize("name", ["ptq_x86", "onnx_int8", "openvino_int8"])
def test_fallback_keeps_the_chosen_layers_float_in_the_artifact_and_reports_them(tmp_path, name):
    torch.manual_seed(0)
    model, calib = _Small().eval(), torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        expected = model(calib).argmax(1)
    config = QuantizeConfig(max_accuracy_drop=0.0, max_float_layers=1, gate=True, calibration_batch_size=32)
    built = build_variant(name, model, calib=calib, config=config, out_dir=tmp_path)
    assert artifact_layer_summary(built.path, built.model)["float"] == 0

    def agreement(predict) -> float:
        return float((predict(calib).argmax(1) == expected).float().mean())

    all_int8 = agreement(load_artifact(built.path))
    # reference 2.0: no build can reach it, so the search ranks every layer, tries the best one float and,
    # having missed, keeps the better of that and all-INT8 (a tie keeps all-INT8: fewer float layers)
    final, record = gate.gate_variant(name, built, model, calib=calib, config=config, validate=agreement,
                                      reference=2.0, timer=lambda predict: 1.0)
    assert not record["met"] and record["candidates"] == 3 and len(record["steps"]) == 1
    assert [row["score"] for row in record["sensitivity"]] == sorted((r["score"] for r in record["sensitivity"]),
                                                                     reverse=True)
    tried = record["steps"][0]
    kept = len(tried["float_layers"]) if tried["score"] > all_int8 else 0
    assert len(record["float_layers"]) == kept and record["val_accuracy"] == round(max(all_int8, tried["score"]), 6)
    assert record.get("latency_ms") == ({"all_int8": 1.0, "with_float_layers": 1.0} if kept else None)
    assert final.path == built.path and artifact_layer_summary(final.path, final.model)["float"] == kept
    assert record["val_accuracy"] == agreement(load_artifact(final.path))  # the record describes the file
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # trial folder removed
    with pytest.raises(EdgecompressError, match=rf"quantize.gate: variant {name} drops [0-9.]+ points on the "
                                                rf"validation split with {kept} layer\(s\) in float"):
        gate.check_gates({name: record}, config)


def test_within_budget_builds_nothing_more_and_records_the_drop(tmp_path):
    torch.manual_seed(0)
    model, calib = _Small().eval(), torch.randn(16, 1, 8, 8)
    config = QuantizeConfig(max_accuracy_drop=1.0)
    built = build_variant("ptq_x86", model, calib=calib, config=config, out_dir=tmp_path)
    final, record = gate.gate_variant("ptq_x86", built, model, calib=calib, config=config, validate=lambda p: 0.9,
                                      reference=0.905)
    assert final is built and record == {"val_accuracy": 0.9, "val_drop_points": 0.5, "budget_points": 1.0,
                                         "float_layers": [], "met": True}


def test_gate_needs_a_budget():
    with pytest.raises(EdgecompressError, match="gate=True is invalid: needs quantize.max_accuracy_drop"):
        QuantizeConfig(gate=True)


def test_failed_gate_leaves_the_previous_artifacts_and_metrics(tmp_path, monkeypatch, capsys):
    import yaml

    prepare_dataset(name="digits", root=None, image_size=8, val_fraction=0.15, test_fraction=0.15, max_samples=200,
                    seed=0, out_dir=tmp_path / "data")
    arch = {"name": "resnet20", "num_classes": 10, "width": 0.25, "small_input": True}
    save_checkpoint(tmp_path / "pruned.pt", build_model("resnet20", 10, width=0.25), arch, {})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["quantize"].update(variants=["ptq_x86"], calibration_samples=32, max_accuracy_drop=0.0, gate=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "quantized").mkdir()
    previous = {tmp_path / "quantized" / "ptq_x86.ts": b"previous artifact", tmp_path / "quantize.json": b"{}"}
    for path, content in previous.items():
        path.write_bytes(content)

    def over_budget(name, built, *args, **kwargs):
        return built, {"val_drop_points": 3.5, "float_layers": ["layer1.0.conv1"], "met": False}

    monkeypatch.setattr(gate, "gate_variant", over_budget)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["quantize.py", "--data", "data", "--pruned", "pruned.pt", "--out-dir",
                                      "quantized", "--metrics", "quantize.json", "--live", "live"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "stages" / "quantize.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: quantize.gate: variant ptq_x86 drops 3.50 points on the validation split with 1 layer(s) "
                   "in float (quantize.max_accuracy_drop=0.0, quantize.max_float_layers=4); previous outputs are kept"]
    assert {path: path.read_bytes() for path in previous} == previous
    assert sorted(p.name for p in (tmp_path / "quantized").iterdir()) == ["ptq_x86.ts"]  # no staging left
    assert json.loads((tmp_path / "quantize.json").read_text()) == {}


def test_without_qat_the_declared_curves_hold_the_starting_point(tmp_path, monkeypatch):
    """dvc.yaml declares dvclive/qat/plots/metrics; with qat left out of quantize.variants the stage still
    writes it (one point: the pruned FP32 model's validation score), or `dvc repro` fails after the stage."""
    import yaml

    prepare_dataset(name="digits", root=None, image_size=8, val_fraction=0.15, test_fraction=0.15, max_samples=200,
                    seed=0, out_dir=tmp_path / "data")
    arch = {"name": "resnet20", "num_classes": 10, "width": 0.25, "small_input": True}
    save_checkpoint(tmp_path / "pruned.pt", build_model("resnet20", 10, width=0.25), arch, {})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["quantize"].update(variants=["dynamic"], calibration_samples=32, max_accuracy_drop=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["quantize.py", "--data", "data", "--pruned", "pruned.pt", "--out-dir",
                                      "quantized", "--metrics", "quantize.json", "--live", "live"])
    runpy.run_path(str(ROOT / "stages" / "quantize.py"), run_name="__main__")
    rows = (tmp_path / "live" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().splitlines()
    assert rows[0] == "step\taccuracy" and len(rows) == 2
    assert "qat" not in json.loads((tmp_path / "quantize.json").read_text())["variants"]
