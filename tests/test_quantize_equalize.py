"""Cross-layer equalization and bias correction (quantize.equalize, quantize.bias_correction) on tiny
networks: CLE keeps the float function while balancing per-channel weight ranges (depthwise included),
bias correction removes the per-channel mean error of a quantized net on its calibration images."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.quantize import bias_correction, equalize, fx


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _unbalanced_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    """BN statistics that make the folded per-channel weight ranges differ by ~100x."""
    channels = bn.num_features
    bn.running_mean.copy_(0.1 * torch.randn(channels, generator=gen))
    bn.running_var.copy_(torch.rand(channels, generator=gen) * 2 + 0.1)
    bn.weight.data.copy_(torch.logspace(-1.5, 0.5, channels)[torch.randperm(channels, generator=gen)])
    bn.bias.data.copy_(0.3 * torch.randn(channels, generator=gen))


def _chain(activation: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    """conv -> BN -> act -> depthwise -> BN -> act -> conv -> BN: two pairs through a depthwise conv."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), activation(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), activation(),
                          nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            _unbalanced_bn(module, gen)
    return model.eval()


def _spread(first: nn.Conv2d, second: nn.Conv2d) -> float:
    """Largest ratio between a channel's range in `first` (outputs) and in `second` (inputs)."""
    r1 = first.weight.detach().abs().amax(dim=(1, 2, 3))
    r2 = second.weight.detach().abs().amax(dim=(1, 2, 3) if second.groups > 1 else (0, 2, 3))
    ratio = r1 / r2
    return float(ratio.max() / ratio.min())


def test_cle_keeps_function_and_equalizes_depthwise_chain():
    model = _chain()
    x = torch.randn(4, 3, 10, 10)
    folded = equalize.fold_batchnorm(model)
    before = [_spread(folded[0], folded[3]), _spread(folded[3], folded[6])]
    equalized = equalize.cross_layer_equalize(model)
    after = [_spread(equalized[0], equalized[3]), _spread(equalized[3], equalized[6])]
    with torch.no_grad():
        torch.testing.assert_close(equalized(x), model(x), atol=1e-5, rtol=1e-5)
    assert equalize.plan_equalization(model).pairs == [("0", "3"), ("3", "6")]
    assert min(before) > 5.0, before  # the fixture really is unbalanced
    assert max(after) < 1.05, after  # r1_i == r2_i for every channel of both pairs
    assert float(model[1].weight.detach().min()) < 0.1 and float(model[1].running_var.min()) > 0.1  # untouched


def test_cle_reduces_int8_error_of_unbalanced_net():
    """CLE's original use case: per-tensor INT8 weights (qnnpack's default mapping), where one narrow
    channel next to a wide one is rounded to a few levels."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("qnnpack engine not in this torch build")
    model, x = _chain(), torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        reference = model(x)

    def error(source: nn.Module, **options: bool) -> float:
        quantized = fx.quantize_static_fx(source, x, backend="qnnpack", **options)
        with fx.quant_engine("qnnpack"), torch.no_grad():
            return float((quantized(x) - reference).pow(2).mean())

    baseline = error(model)
    assert error(equalize.cross_layer_equalize(model)) < 0.5 * baseline
    assert error(model, equalize=True) < 0.5 * baseline  # the same through quantize_static_fx (+ absorption)


def test_bias_absorption_only_into_unpadded_convs():
    """conv -> BN -> ReLU -> 1x1 conv: channels whose BN puts them far above 0 move their offset into the
    next conv's bias (exact while they stay above it); a padded 3x3 conv2 is left alone (its zero border
    would not see the offset)."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()
    for bn in (model[1], model[4]):
        _unbalanced_bn(bn, gen)
        bn.bias.data += 10 * bn.weight.data  # beta - 3 gamma > 0: always-positive channels
    model[0].weight.data[2] = 0  # a pruned channel: never rescaled, its constant output still absorbed
    x = torch.randn(8, 3, 6, 6)
    plain = equalize.cross_layer_equalize(model)
    absorbed = equalize.cross_layer_equalize(model, bias_absorption=True)
    with torch.no_grad():
        torch.testing.assert_close(absorbed(x), model(x), atol=1e-4, rtol=1e-4)
        assert float((absorbed[0](x)).amax()) < 0.5 * float(plain[0](x).amax())  # narrower activation
    assert not torch.allclose(absorbed[3].bias, plain[3].bias)  # 1x1 conv2 took the offsets
    torch.testing.assert_close(absorbed[6].bias, plain[6].bias)  # the padded 3x3 conv2: untouched
    with pytest.raises(EdgecompressError, match="bias_absorption"):
        equalize.cross_layer_equalize(model, relu6="clamp", bias_absorption=True)


def test_relu6_modes():
    model = _chain(nn.ReLU6)
    assert equalize.plan_equalization(model, "stop").pairs == []
    assert len(equalize.plan_equalization(model, "relu").relu6_between) == 2
    replaced = equalize.cross_layer_equalize(model, relu6="relu")
    assert not any(isinstance(m, nn.ReLU6) for m in replaced.modules())
    kept = equalize.cross_layer_equalize(model, relu6="clamp")
    assert sum(isinstance(m, nn.ReLU6) for m in kept.modules()) == 2
    x = 20 * torch.randn(4, 3, 10, 10)  # large inputs: ReLU6 clips, so "relu" changes the function
    with torch.no_grad():
        torch.testing.assert_close(replaced(x), equalize.replace_relu6(model)(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(replaced(x), model(x), atol=1e-3)


def test_residual_branch_is_not_paired():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y) + y  # a's output has two users: rescaling it would change the sum

    assert equalize.plan_equalization(Residual()).pairs == []
    # a BatchNorm after the ReLU is not folded into conv1, and its mean would not scale: no pair
    late_bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)).eval()
    assert equalize.plan_equalization(late_bn).pairs == []


def test_cle_rejects_bad_inputs():
    with pytest.raises(EdgecompressError, match="relu6"):
        equalize.cross_layer_equalize(_chain(), relu6="hardtanh")
    with pytest.raises(EdgecompressError, match="iterations"):
        equalize.cross_layer_equalize(_chain(), iterations=0)
    with pytest.raises(EdgecompressError, match="groups=2"):
        equalize.equalize_pair(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1, groups=2))
    with pytest.raises(EdgecompressError, match="output channels"):
        equalize.equalize_pair(nn.Conv2d(3, 5, 1), nn.Conv2d(4, 4, 1))

    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(EdgecompressError, match="trace"):
        equalize.cross_layer_equalize(Untraceable())


def _channel_error(quantized: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with fx.quant_engine("x86"), torch.no_grad():
        return float((quantized(x) - model(x)).mean(dim=(0, 2, 3)).abs().mean())


@pytest.mark.parametrize("qconfig,factor", [("default", 0.75), ("vnni", 0.3)])
def test_bias_correction_reduces_mean_error(qconfig, factor):
    """The output's own re-quantization (7-bit with `default`) is not corrected: a smaller gain there."""
    model, x = _chain(seed=1), torch.randn(48, 3, 10, 10)
    plain = fx.quantize_static_fx(model, x, backend="x86", qconfig=qconfig)
    corrected = fx.quantize_static_fx(model, x, backend="x86", qconfig=qconfig, bias_correction=True)
    assert _channel_error(corrected, model, x) < factor * _channel_error(plain, model, x)


def test_bias_correction_is_before_fused_relu():
    """One Conv+ReLU (fused in FX): the correction zeroes the *pre-activation* mean error, measured on
    the reference model, and the converted INT8 conv carries the corrected bias."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, convert_to_reference_fx, prepare_fx

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()).eval()
    model[0].weight.data[:, :, 0, 0] += 0.37  # weights off the int8 grid in a biased way
    x = torch.randn(40, 3, 8, 8)
    with fx.quant_engine("x86"), torch.no_grad():
        # prepare_fx shares the parameters of the model it is given: correcting would change `model` too
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x[:1],))
        prepared(x)
        original_bias = prepared.get_submodule("0.0").bias.clone()
        corrections = bias_correction.correct_bias_fx(prepared, x)
        assert list(corrections) == ["0.0"]
        reference = convert_to_reference_fx(prepared)
        # the reference conv sees the input quantized at the observed qparams
        scale, zero = float(getattr(reference, "0_input_scale_0")), int(getattr(reference, "0_input_zero_point_0"))
        xq = torch.quantize_per_tensor(x, scale, zero, torch.quint8).dequantize()
        pre_q = reference.get_submodule("0.0")(xq)
        pre_f = model[0](x)
        assert float((pre_q - pre_f).mean(dim=(0, 2, 3)).abs().max()) < 1e-4
        converted = convert_fx(prepared)
        torch.testing.assert_close(converted.get_submodule("0").bias(), original_bias - corrections["0.0"])


def test_bias_correction_rejects_bad_calibration():
    model = _chain()
    with pytest.raises(EdgecompressError, match="one non-empty"):
        fx.quantize_static_fx(model, [torch.randn(1, 3, 10, 10)], backend="x86", bias_correction=True)
