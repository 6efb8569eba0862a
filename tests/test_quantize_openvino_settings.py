"""`quantize.openvino` settings reach NNCF: the activation range estimator changes the INT8 ranges, and a
wrong value is one line naming the key and what is allowed."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.quantize.config import OpenVINOConfig
from edgecompress.quantize.openvino import convert_to_openvino, quantize_openvino


def activation_highs(model) -> list[float]:
    """The upper bound of every activation FakeQuantize (input_high, its third input) of an NNCF IR."""
    highs = []
    for node in model.get_ops():
        if node.get_type_name() == "FakeQuantize" and node.input_value(0).get_node().get_type_name() != "Constant":
            highs.append(float(node.input_value(2).get_node().get_data().max()))
    return highs


def test_activation_range_estimator_changes_the_int8_ranges(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    calib = torch.randn(32, 3, 12, 12)
    calib[0] *= 50  # one outlier image: min/max ranges follow it, quantile ranges do not
    fp32 = convert_to_openvino(net, calib[:2], tmp_path / "fp32.xml")
    # batches of one: NNCF aggregates per batch (min/max: the extreme batch; mean_quantile: the mean of the batches')
    minmax = quantize_openvino(fp32, calib, tmp_path / "minmax.xml", batch_size=1, activations_range="minmax")
    quantile = quantize_openvino(fp32, calib, tmp_path / "quantile.xml", batch_size=1,
                                 activations_range="mean_quantile")
    assert activation_highs(minmax) and len(activation_highs(minmax)) == len(activation_highs(quantile))
    assert max(activation_highs(quantile)) < 0.5 * max(activation_highs(minmax))


def test_unknown_range_estimator_is_one_line() -> None:
    with pytest.raises(EdgecompressError, match=r"activations_range='percentile' is invalid: allowed: null, minmax, "
                                                r"mean_minmax, .*histogram"):
        OpenVINOConfig(activations_range="percentile").validate()
    assert "full bias correction, histogram activation ranges" in OpenVINOConfig(
        fast_bias_correction=False, activations_range="histogram").summary()


def test_histogram_on_a_constant_activation_falls_back_and_says_so(tmp_path: Path, caplog) -> None:
    """NNCF's histogram cannot bin an activation that never varies (untrained or dead channels): the
    model is quantized with NNCF's default ranges instead, and the IR records which were used."""
    from edgecompress.quantize.openvino import openvino_layer_summary

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        net[0].weight.mul_(1e-7)
        net[0].bias.fill_(1.0)  # the second conv's input spans a few float32 steps around 1: 2048 bins do not fit
    calib = torch.randn(8, 3, 8, 8)
    fp32 = convert_to_openvino(net, calib[:2], tmp_path / "fp32.xml")
    quantize_openvino(fp32, calib, tmp_path / "hist.xml", batch_size=4, activations_range="histogram")
    used = openvino_layer_summary(tmp_path / "hist.xml")["activations_range"]
    assert used.startswith("nncf_default (histogram failed: ") and "histogram range estimator failed" in caplog.text
    quantize_openvino(fp32, calib, tmp_path / "q.xml", batch_size=4, activations_range="mean_quantile")
    assert openvino_layer_summary(tmp_path / "q.xml")["activations_range"] == "mean_quantile"
