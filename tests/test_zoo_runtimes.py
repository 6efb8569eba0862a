"""zoo.runtimes: the quality gate of the INT8 runtimes, on a model built to quantize badly. Its first
convolution writes one channel ~1000x larger than the others, which the second convolution ignores:
quantizing that second convolution's input per tensor rounds the small channels (all the signal) to
zero, so the fallback must find it and keep it float."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

from edgecompress.quantize.config import OnnxInt8Config, OpenVINOConfig
from edgecompress.quantize.onnx import onnx_compute_nodes
from edgecompress.quantize.openvino import openvino_compute_nodes
from edgecompress.zoo import runtimes
from edgecompress.zoo.measure import Measurement


class _Outlier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 1), nn.Linear(8, 4)
        with torch.no_grad():
            for layer in (self.a, self.b, self.c):
                layer.bias.zero_()
                layer.weight.mul_(4)  # logits that vary from image to image
            self.a.weight[0] *= 1000  # the outlier channel
            self.b.weight[:, 0] = 0  # ... that the next layer ignores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)).mean((2, 3)))


@pytest.mark.parametrize("name", ["onnx_int8", "openvino_int8"])
def test_gate_keeps_the_layer_whose_input_quantization_destroys_the_signal_float(tmp_path, name):
    model = _Outlier().eval()
    calibration = torch.randn(64, 3, 4, 4)
    with torch.no_grad():
        targets = tuple(model(calibration).argmax(1).tolist())  # FP32 is right on every image
    how = Measurement(batch_sizes=(8,), warmup=0, repeats=3, eval_batch_size=32)
    build = partial(runtimes._build, name, model, calibration, tmp_path, threads=1, calibration_batch_size=32,
                    openvino=OpenVINOConfig(), onnx=OnnxInt8Config())
    gate = runtimes.Gate(max_accuracy_drop=5.0, max_float_layers=2, targets=targets)
    path, predict, record = runtimes._gated_build(name, lambda layers: build(float_layers=layers), model,
                                                  calibration, tmp_path, gate, how)
    nodes = (onnx_compute_nodes(tmp_path / "onnx_fp32.onnx") if name == "onnx_int8"
             else openvino_compute_nodes(tmp_path / "openvino_fp32.xml"))
    assert record["all_int8"]["drop_points"] > 5.0 and record["all_int8"]["latency_ms"] > 0 < record["latency_ms"]
    assert record["met"] and record["drop_points"] <= 5.0 and record["candidates"] == len(nodes) == 3
    # the second convolution, whose input holds the outlier, is kept float (ONNX Runtime also needs the first:
    # a quantized node quantizes its own output)
    assert nodes[1] in record["float_layers"] and set(record["float_layers"]) <= set(nodes[:2])
    with torch.no_grad():
        assert (predict(calibration).argmax(1) == torch.tensor(targets)).float().mean() >= 0.95


def test_gate_off_builds_once_and_records_nothing(tmp_path):
    model, calibration = _Outlier().eval(), torch.randn(8, 3, 4, 4)
    calls = []

    def build(layers):
        calls.append(layers)
        return tmp_path / "x.onnx", model

    gate = runtimes.Gate(max_accuracy_drop=None, max_float_layers=2, targets=(0,) * 8)
    assert runtimes._gated_build("onnx_int8", build, model, calibration, tmp_path, gate, Measurement())[2] == {}
    assert calls == [()]
