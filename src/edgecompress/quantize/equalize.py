"""Cross-layer equalization (CLE) of consecutive convolutions before INT8 quantization.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV 2019),
section 4.1. For a pair conv1 -> [ReLU] -> conv2, relu(x / s) = relu(x) / s for s > 0, so dividing
output channel i of conv1 (weights and bias) by s_i and multiplying input channel i of conv2 by s_i
leaves the network's function unchanged. With s_i = sqrt(r1_i / r2_i) (r = a channel's largest
absolute weight) both channels end with the same range sqrt(r1_i * r2_i): a channel whose weights are
tiny next to its layer's widest channel no longer rounds to a few levels, and the activation between
the two layers is balanced across channels too.

Why here rather than `torch.ao.quantization._equalize`: that one refuses depthwise convolutions, and
MobileNetV2 is mostly expand -> depthwise -> project chains. A depthwise conv's output channel i
depends only on its input channel i, so it is the second conv of one pair and the first of the next;
scales are iterated over all pairs until they stop moving.

BatchNorm is folded into its conv first (the ranges that get quantized are the folded ones); the BN
module stays, reset to an exact identity (weight 1, bias 0, mean 0, var 1, eps 0), so module names and
the Conv-BN-ReLU pattern FX fuses are unchanged (float-fallback layer names still apply).

ReLU6 does not commute with scaling: relu6(x / s) != relu6(x) / s. Three choices (`relu6`):
- "relu": replace every ReLU6 that sits between a pair by ReLU, as the paper does for MobileNetV2 —
  this changes the float function (measured: docs/experiments/fx_int8_steps.py);
- "clamp": keep ReLU6; channel i is then clipped at 6 * s_i in original units, also not exact;
- "stop": never pair across a ReLU6 (exact, but on MobileNetV2 leaves only the few pairs without one).

Measured on torchvision's MobileNetV2 (docs/experiments/fx_int8_steps.py; 400 ImageNet-sample images
evaluated, FP32 top-1 83.25%; choices on the 100 calibration images only): 36 pairs (34 across a ReLU6,
2 project -> expand without residual). "relu" alone, without rescaling, costs the float model 0.25
point of top-1 (83.00%), 97.75% agreement with the original, 25.0 dB logit SQNR; "clamp" destroys it
(12.5% top-1: a channel scaled by 1/s_i is clipped at 6 s_i in its old units, and the first sweep alone
moves s_i by up to e^3.5), so "relu" is the default; "stop" pairs only 2 convs.

With x86 per-channel weights CLE does not pay here: `vnni` + ReLU6 split 92.0% agreement / 12.6 dB,
+ CLE 90.0% / 10.2 dB (calibration images: 92% -> 85%). Per-channel weight quantization already gives
each output channel its own scale, so the only weight gain left is conv2's per-input-channel balance,
while the per-tensor activations after the expand convs widen (features.3-17: max on 40 calibration
images 2.3-11x, e.g. features.17 4.8 -> 35.6): the loss is in the activations. Bias absorption helps
on the calibration images (85% -> 90%, hence `quantize_static_fx(equalize=True)` uses it) but not on
the 400 evaluated (88.3%); with bias correction, CLE (+ absorption) ends at 92.0% (93.5%), below bias
correction alone (94.0%).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.config import check, check_choice

log = logging.getLogger(__name__)

RELU6_MODES = ("relu", "clamp", "stop")
_PASS_THROUGH = (nn.BatchNorm2d, nn.ReLU, nn.Identity)  # positive per-channel scaling commutes with these


@dataclass
class EqualizationPlan:
    """What `plan_equalization` found: the conv pairs (by module name, in graph order), the names of
    the ReLU6 modules that sit between a pair's convs, and for each pair whose conv1 is followed by a
    BatchNorm and then a ReLU(6), that BatchNorm's name (what bias absorption needs)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    relu6_between: list[str] = field(default_factory=list)
    bn_before_relu: dict[str, str] = field(default_factory=dict)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, RuntimeError ...)
        raise EdgecompressError(f"cross-layer equalization needs a model torch.fx can trace; "
                                f"{type(model).__name__} failed: {exc}") from exc


def _module(model: nn.Module, node: torch.fx.Node) -> nn.Module | None:
    return model.get_submodule(str(node.target)) if node.op == "call_module" else None


def _equalizable_second(conv: nn.Conv2d) -> bool:
    """conv2 of a pair: a dense conv, or a depthwise one (its input channel i is its output channel i)."""
    return conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels


def _passes(module: nn.Module | None, right_after_conv: bool, relu6: str) -> bool:
    """Can a per-channel positive scale pass `module` unchanged? A BatchNorm only right after conv1 (it is
    folded there; anywhere else its mean would not scale), a ReLU6 unless relu6="stop"."""
    if isinstance(module, nn.BatchNorm2d):
        return right_after_conv and module.running_mean is not None
    if isinstance(module, nn.ReLU6):
        return relu6 != "stop"
    return isinstance(module, (nn.ReLU, nn.Identity))


def plan_equalization(model: nn.Module, relu6: str = "relu") -> EqualizationPlan:
    """Find conv1 -> [BatchNorm] -> [ReLU / ReLU6 / Identity] -> conv2 chains in `model`'s FX graph where
    every intermediate result has a single user (a residual branch or a concat reading conv1's output
    would see the rescaled channels, so such a conv is not paired)."""
    check_choice(relu6, "relu6", RELU6_MODES)
    traced = _trace(model)
    plan = EqualizationPlan()
    for node in traced.graph.nodes:
        conv1 = _module(traced, node)
        if not isinstance(conv1, nn.Conv2d):
            continue
        current, chain = node, []
        while len(current.users) == 1:
            user = next(iter(current.users))
            module = _module(traced, user)
            if isinstance(module, nn.Conv2d):
                if user.args[0] is current and _equalizable_second(module) and module.in_channels == conv1.out_channels:
                    plan.pairs.append((str(node.target), str(user.target)))
                    plan.relu6_between += [name for name, m in chain if isinstance(m, nn.ReLU6)]
                    kinds = [type(m) for _, m in chain]
                    if kinds[:1] == [nn.BatchNorm2d] and any(k in (nn.ReLU, nn.ReLU6) for k in kinds[1:]):
                        plan.bn_before_relu[str(node.target)] = chain[0][0]
                break
            if not _passes(module, current is node, relu6):
                break
            chain.append((str(user.target), module))
            current = user
    return plan


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def replace_relu6(model: nn.Module, names: Sequence[str] | None = None) -> nn.Module:
    """A copy of `model` with the nn.ReLU6 modules named in `names` (all when None) replaced by nn.ReLU.
    Not the same function: activations above 6 pass unclipped."""
    model = copy.deepcopy(model)
    targets = [n for n, m in model.named_modules() if type(m) is nn.ReLU6] if names is None else list(names)
    for name in targets:
        if not isinstance(model.get_submodule(name), nn.ReLU6):
            raise EdgecompressError(f"replace_relu6: module '{name}' is not an nn.ReLU6")
        _set_module(model, name, nn.ReLU(inplace=getattr(model.get_submodule(name), "inplace", False)))
    return model


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every BatchNorm2d that is a Conv2d's only user folded into it.

    The BN module stays, set to an exact identity (weight 1, bias 0, running mean 0, var 1, eps 0): the
    names and the Conv-BN-ReLU pattern that FX fuses are kept, and the float function is unchanged up to
    float rounding (MobileNetV2: max logit difference ~1e-5)."""
    model = copy.deepcopy(model).eval()
    traced = _trace(model)
    for node in traced.graph.nodes:
        conv = _module(traced, node)
        if not isinstance(conv, nn.Conv2d) or len(node.users) != 1:
            continue
        bn_node = next(iter(node.users))
        bn = _module(traced, bn_node)
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        conv = model.get_submodule(str(node.target))
        bn = model.get_submodule(str(bn_node.target))
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.eps = 0.0
        if bn.affine:
            bn.weight.fill_(1.0)
            bn.bias.zero_()
    return model


def _input_channel_range(conv: nn.Conv2d) -> torch.Tensor:
    """Largest |weight| reading each input channel (a depthwise conv's input channel i is its row i)."""
    dims = (1, 2, 3) if conv.groups > 1 else (0, 2, 3)
    return conv.weight.detach().abs().amax(dim=dims)


@torch.no_grad()
def equalize_pair(conv1: nn.Conv2d, conv2: nn.Conv2d, min_range: float = 1e-8) -> torch.Tensor:
    """Rescale one pair in place: conv1's output channel i (weight and bias) by 1 / s_i, conv2's input
    channel i by s_i, s_i = sqrt(r1_i / r2_i); returns s. A channel whose range is below `min_range` on
    either side (dead channel) keeps s_i = 1 instead of being blown up."""
    if not _equalizable_second(conv2):
        raise EdgecompressError(f"equalize_pair: conv2 has groups={conv2.groups} with {conv2.in_channels} input "
                                "channels; only dense (groups=1) or depthwise convolutions can be rescaled")
    if conv1.out_channels != conv2.in_channels:
        raise EdgecompressError(f"equalize_pair: conv1 has {conv1.out_channels} output channels but conv2 "
                                f"{conv2.in_channels} input channels")
    r1 = conv1.weight.abs().amax(dim=(1, 2, 3))
    r2 = _input_channel_range(conv2)
    valid = (r1 > min_range) & (r2 > min_range)
    s = torch.where(valid, torch.sqrt(r1 / r2.clamp_min(min_range)), torch.ones_like(r1))
    conv1.weight.div_(s.reshape(-1, 1, 1, 1))
    if conv1.bias is not None:
        conv1.bias.div_(s)
    conv2.weight.mul_(s.reshape(-1, 1, 1, 1) if conv2.groups > 1 else s.reshape(1, -1, 1, 1))
    return s


@torch.no_grad()
def equalize_pairs(model: nn.Module, pairs: Sequence[tuple[str, str]], iterations: int = 20,
                   tolerance: float = 1e-3) -> int:
    """Sweep `equalize_pair` over `pairs` in place until no scale moves more than `tolerance`
    (max |log s|) or `iterations` sweeps ran; returns the sweeps made. Chains through depthwise convs
    need several: equalizing (dw, project) disturbs (expand, dw). MobileNetV2 (36 pairs): max |log s| is
    3.5 in sweep 1, 0.30 in sweep 3, 0.016 in sweep 10, 9e-4 in sweep 20 (the default stops there)."""
    check(iterations >= 1, "iterations", iterations, "must be an integer >= 1")
    convs = [(model.get_submodule(a), model.get_submodule(b)) for a, b in pairs]
    for sweep in range(1, iterations + 1):
        moved = max((float(equalize_pair(c1, c2).log().abs().max()) for c1, c2 in convs), default=0.0)
        if moved < tolerance:
            break
    log.info("cross-layer equalization: %d pairs, %d sweeps, last max |log s| %.2g", len(convs), sweep, moved)
    return sweep


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) if conv.padding == "valid" else (1,)
    return tuple(conv.padding)


@torch.no_grad()
def absorb_biases(model: nn.Module, pairs: Sequence[tuple[str, str]], shifts: dict[str, torch.Tensor]) -> None:
    """Bias absorption (paper section 4.1.2), in place: for a pair conv1 -> ReLU -> conv2 whose conv1
    channel i is (nearly) always above c_i >= 0, relu(h_i) = relu(h_i - c_i) + c_i, so c_i leaves conv1's
    bias and conv2's bias gains its effect (sum of the weights reading channel i, times c_i). This
    narrows the activation range after conv1 without changing the function, except where h_i < c_i
    and at conv2's zero-padded borders: a padded conv2 is skipped (absorbing into MobileNetV2's padded
    depthwise convs too dropped the float model's agreement with itself on the calibration images to
    93%, 17.2 dB; into its 1x1 convs only: 98%, 22.1 dB). `shifts` maps conv1 names to c."""
    for first, second in pairs:
        conv1, conv2 = model.get_submodule(first), model.get_submodule(second)
        if first not in shifts or any(p != 0 for p in _padding(conv2)):
            continue  # a zero-padded border reads 0, not c: the bias would be wrong there
        c = shifts[first].clamp_min(0)
        conv1.bias.sub_(c)
        summed = conv2.weight.sum(dim=(2, 3))  # dense: (out, in); depthwise: (C, 1)
        if conv2.bias is None:
            conv2.bias = nn.Parameter(torch.zeros(conv2.out_channels))
        conv2.bias.add_(summed[:, 0] * c if conv2.groups > 1 else summed @ c)


def _absorbable_shifts(model: nn.Module, plan: EqualizationPlan,
                       scale: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """c_i = (beta_i - 3 |gamma_i|) / S_i from the BatchNorm after conv1 (its output ~ N(beta, gamma^2)),
    S_i the equalization scale conv1's channel i was divided by."""
    shifts = {}
    for first, bn_name in plan.bn_before_relu.items():
        bn = model.get_submodule(bn_name)
        if bn.affine:
            shifts[first] = (bn.bias.detach() - 3 * bn.weight.detach().abs()) / scale[first]
    return shifts


def cross_layer_equalize(model: nn.Module, *, relu6: str = "relu", iterations: int = 20,
                         tolerance: float = 1e-3, bias_absorption: bool = False) -> nn.Module:
    """A copy of `model` with BatchNorm folded and every conv pair equalized (see the module docstring).

    Args:
        model: float model (FX-traceable); left untouched.
        relu6: "relu" (replace the ReLU6 between paired convs by ReLU, the paper's choice), "clamp"
            (keep them: inexact) or "stop" (do not pair across ReLU6: exact).
        iterations: most sweeps over all pairs; tolerance: stop once max |log s| is below it.
        bias_absorption: then `absorb_biases` with c from the BatchNorm statistics (data-free; only
            across ReLU, so not with relu6="clamp").
    Returns:
        The equalized copy (eval mode), same module names.
    Raises:
        EdgecompressError: the model cannot be traced, or `relu6` / `iterations` are invalid.
    """
    check_choice(relu6, "relu6", RELU6_MODES)
    check(iterations >= 1, "iterations", iterations, "must be an integer >= 1")
    check(not (bias_absorption and relu6 == "clamp"), "bias_absorption", bias_absorption,
          "needs relu6='relu' or 'stop' (relu(h) = relu(h - c) + c only holds for ReLU)")
    plan = plan_equalization(model, relu6)
    if not plan.pairs:
        log.warning("cross-layer equalization: no Conv2d pair found in %s; model only BN-folded",
                    type(model).__name__)
    folded = fold_batchnorm(replace_relu6(model, plan.relu6_between) if relu6 == "relu" else model)
    before = {a: folded.get_submodule(a).weight.detach().abs().amax(dim=(1, 2, 3)) for a, _ in plan.pairs}
    equalize_pairs(folded, plan.pairs, iterations, tolerance)
    if bias_absorption:
        after = {a: folded.get_submodule(a).weight.detach().abs().amax(dim=(1, 2, 3)) for a in before}
        scale = {a: torch.where((r > 0) & (after[a] > 0), r / after[a].clamp_min(1e-30), torch.ones_like(r))
                 for a, r in before.items()}  # an all-zero (pruned) channel was never rescaled
        absorb_biases(folded, plan.pairs, _absorbable_shifts(model, plan, scale))
    return folded
