"""Empirical bias correction of FX static INT8 models (Nagel et al., ICCV 2019, section 4.2).

Rounding weights to 8 bits is not unbiased per output channel: E[W~ x~] - E[W x] is a per-channel
offset that every following layer inherits (the paper finds depthwise convs, 9 weights per channel,
hit hardest). The empirical variant measures it on the calibration images and subtracts it from the
bias. Only Conv2d layers are corrected (MobileNetV2's classifier Linear is not).

torch's `torch.ao.quantization._correct_bias` works on eager-mode models only. For FX this works on
the *prepared* (calibrated) model: `convert_to_reference_fx` of a copy gives a model that computes what
the INT8 one does in float (activations quantize-dequantized at the observed qparams, each conv's weight
quantize-dequantized by its reference module, float bias). Each reference conv's output is the
pre-activation (a fused Conv+ReLU is a Sequential(conv, ReLU), and the hook sits on the conv), so the
correction lands before the activation. Forward hooks correct the convs in execution order during one
pass over all calibration images, each also shifting its output so that every later layer sees the
corrected upstream; the corrected biases are then copied into the prepared model by module name, and
`convert_fx` packs them into the INT8 kernels (observers keep their calibrated ranges).

Measured (docs/experiments/fx_int8_steps.py: torchvision MobileNetV2, 100 calibration images, 400 other
ImageNet-sample images evaluated, FP32 top-1 83.25%): `vnni` + ReLU6 split 80.75% top-1, 92.0% agreement
with FP32, 12.6 dB logit SQNR -> with bias correction 82.25%, 94.0%, 12.7 dB; `custom` 81.00%, 91.3%,
12.3 dB -> 82.50%, 94.25%, 13.2 dB. The mean error is what it removes, so SQNR moves little; argmax
agreement gains 2-3 points. Cost: one float and one reference pass over the calibration images
(`quantize_static_fx` on MobileNetV2, 100 images, 2 shared cores: 10-15 s -> 45-50 s; peak RSS 1.3 ->
2.5 GB, the reference pass taking all images as one batch).
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.quantize.common import batches

log = logging.getLogger(__name__)


def _reference_convs(reference: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized import reference as nnqr

    return {name: m for name, m in reference.named_modules() if isinstance(m, nnqr.Conv2d)}


@torch.no_grad()
def _float_means(prepared: nn.Module, names: Sequence[str], calib: torch.Tensor,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """Per-channel mean of each named conv's float output (pre-activation) over `calib`, on a copy of the
    prepared model whose observers are replaced by identities: fed the images a second time, they would
    move their ranges, and HistogramObservers cost more than the convolutions (MobileNetV2, 100 images:
    this pass took ~20 s with them, ~10 s without)."""
    from torch.ao.quantization.observer import ObserverBase

    model = copy.deepcopy(prepared)
    for name in [n for n, m in model.named_modules() if isinstance(m, ObserverBase)]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str) -> None:
        total = output.sum(dim=(0, 2, 3), dtype=torch.float64)
        sums[name] = sums[name] + total if name in sums else total
        counts[name] = counts.get(name, 0) + output.numel() // output.shape[1]

    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in names]
    try:
        for batch in batches(calib, batch_size):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise EdgecompressError(f"bias correction: convolutions {missing[:3]} never ran in the float model")
    return {n: s / counts[n] for n, s in sums.items()}


@torch.no_grad()
def _sequential_corrections(reference: nn.Module, convs: dict[str, nn.Module], float_means: dict[str, torch.Tensor],
                            calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """One pass of the reference model over all of `calib`: each conv, in execution order, measures
    its per-channel mean error against `float_means`, removes it from its bias and from its output."""
    corrections: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str) -> torch.Tensor:
        error = (output.mean(dim=(0, 2, 3), dtype=torch.float64) - float_means[name]).to(output.dtype)
        corrections[name] = error
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.out_channels))
        module.bias.sub_(error)
        return output - error.reshape(1, -1, 1, 1)

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in convs.items()]
    try:
        reference(calib)
    finally:
        for handle in handles:
            handle.remove()
    return corrections


def correct_bias_fx(prepared: nn.Module, calib: torch.Tensor, *, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Empirical bias correction of a calibrated FX model (the output of `prepare_fx`, observers fed),
    in place, before `convert_fx`.

    Args:
        prepared: prepared and calibrated GraphModule; its Conv2d biases (inside fused modules too) change.
            `prepare_fx` shares the parameters of the model it was given, so that model's biases change
            too (`quantize_static_fx` prepares a copy).
        calib: calibration images (N, C, H, W); the reference pass takes them as one batch (layer-by-layer
            correction in one pass), so memory grows with N (MobileNetV2, 100 images at 224 px: +1.2 GB).
        batch_size: batch size of the float pass.
    Returns:
        Per-conv correction subtracted from the bias (module name -> per-output-channel tensor).
    Raises:
        EdgecompressError: `calib` is not a non-empty image tensor, or the model has no convolution.
    """
    if not isinstance(calib, torch.Tensor) or calib.dim() != 4 or len(calib) == 0:
        raise EdgecompressError("bias correction needs the calibration images as one non-empty (N, C, H, W) tensor")
    from torch.ao.quantization.quantize_fx import convert_to_reference_fx

    with torch.no_grad():
        reference = convert_to_reference_fx(copy.deepcopy(prepared))
    convs = _reference_convs(reference)
    if not convs:
        raise EdgecompressError("bias correction: the prepared model has no quantized Conv2d")
    targets = {name: prepared.get_submodule(name) for name in convs}
    wrong = [n for n, m in targets.items() if not isinstance(m, nn.Conv2d)]
    if wrong:
        raise EdgecompressError(f"bias correction: {wrong[:3]} are not Conv2d in the prepared model")
    float_means = _float_means(prepared, list(convs), calib, batch_size)
    corrections = _sequential_corrections(reference, convs, float_means, calib)
    with torch.no_grad():
        for name, conv in targets.items():
            if name not in corrections:
                continue  # never ran (dead branch): nothing measured
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
            conv.bias.sub_(corrections[name])
    largest = max(corrections, key=lambda n: float(corrections[n].abs().max()))
    log.info("bias correction: %d convolutions corrected, largest |correction| %.3g in %s", len(corrections),
             float(corrections[largest].abs().max()), largest)
    return corrections
