"""PyTorch-native quantization in FX graph mode (`torch.ao.quantization`), and the TorchScript
artifacts its models are saved as.

- static INT8 PTQ (`quantize_static_fx`): `prepare_fx` fuses Conv-BN-ReLU and the residual add+ReLU,
  observers are calibrated, `convert_fx`; per engine (x86/fbgemm/qnnpack) with torch's default QConfig
  mapping, or with `custom_qconfig`;
- dynamic INT8 (`quantize_dynamic_linear`): `nn.Linear` only, PyTorch has no dynamic Conv2d;
- FP16 (`to_fp16`): half-precision weights behind a float32 interface;
- QAT (`prepare_qat` ... `convert_qat`): fake-quant training through the shared loop, then INT8.

Artifacts are frozen TorchScript (`torch.jit.trace` + `torch.jit.freeze` + `torch.jit.save`): a
converted FX GraphModule traces cleanly (it cannot be scripted in torch 2.14: FX emits
`_torch_Tensor_` annotations that TorchScript rejects) and loads with `torch.jit.load` alone. Packed
INT8 weights are re-packed at load time for the *current* `torch.backends.quantized.engine`, so a
consumer must set the engine recorded in the artifact's `edgecompress.json` extra file before loading
(`load_torchscript` does that).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress import EdgecompressError
from edgecompress.config import check_choice
from edgecompress.io import atomic_write
from edgecompress.quantize.bias_correction import correct_bias_fx
from edgecompress.quantize.common import BackendUnsupported, batches, quiet
from edgecompress.quantize.equalize import cross_layer_equalize

log = logging.getLogger(__name__)

FP16_NATIVE, FP16_UPCAST = "native fp16 on CPU", "upcast to fp32"
META_FILE = "edgecompress.json"  # TorchScript extra file: {"quant_engine": ..., ...}


def _supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def check_backend(backend: str) -> None:
    """Raise `BackendUnsupported` unless `backend` is a quantized engine of this torch build."""
    supported = _supported_engines()
    if backend not in supported:
        raise BackendUnsupported(f"quantization backend '{backend}' is not supported by torch "
                                 f"{torch.__version__} here (supported engines: {', '.join(supported)})")


@contextlib.contextmanager
def quant_engine(backend: str) -> Iterator[None]:
    """Set `torch.backends.quantized.engine` for the block (packing and kernels depend on it)."""
    check_backend(backend)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def custom_qconfig(backend: str = "x86") -> Any:
    """Histogram activations over the full 8-bit range + per-channel symmetric MinMax weights on 7 bits.

    Torch's default x86/fbgemm qconfig keeps 8-bit weights and narrows the activations instead
    (`reduce_range=True`, 7-bit): fbgemm's u8 x s8 kernels add pairs of products in 16 bits
    (vpmaddubsw), and 255 * 127 * 2 overflows it. Its depthwise-conv kernels do so even on VNNI CPUs:
    full-range activations with full-range weights turned MobileNetV2's outputs to noise here (SQNR
    -8 dB vs FP32, top-1 agreement 0%). This config moves the lost bit to the weights instead
    (255 * 63 * 2 fits): one more bit of activation resolution, which the activations (a histogram
    of real data) usually need more than per-channel weights do (MobileNetV2: SQNR 11.9 dB vs 6.6 dB
    for the default).
    """
    from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver, QConfig

    return QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                               reduce_range=False),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  quant_min=-64, quant_max=63))


def _depthwise_conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]


def vnni_qconfig_mapping(model: nn.Module, backend: str = "x86") -> Any:
    """Full 8-bit HistogramObserver activations and 8-bit per-channel weights everywhere, 7-bit weights
    on depthwise convolutions only.

    On a CPU with VNNI, fbgemm's regular convolutions and linears accumulate u8 x s8 products in 32 bits
    (vpdpbusd), so neither operand needs narrowing there; its depthwise kernels still add pairs in 16
    bits, where 255 * 127 * 2 overflows and 255 * 64 * 2 fits. Torch's default narrows every activation
    to 7 bits, `custom_qconfig` every weight; this one narrows only the operand that overflows.
    """
    from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver, QConfig, get_default_qconfig_mapping

    activation = HistogramObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
    mapping = get_default_qconfig_mapping(backend).set_global(QConfig(
        activation=activation, weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                         qscheme=torch.per_channel_symmetric)))
    for name in _depthwise_conv_names(model):
        mapping.set_module_name(name, custom_qconfig(backend))
    return mapping


QCONFIGS = ("default", "custom", "vnni")


class ClampedReLU(nn.Module):
    """ReLU6 as ReLU then min(x, 6): the same function, but FX fuses the ReLU into the preceding
    Conv(-BN) so that the convolution's output observer sees [0, max]. Left as nn.ReLU6, the output shares
    its input's observer, whose range includes the negative pre-activations the ReLU6 then discards."""

    def __init__(self, limit: float = 6.0) -> None:
        super().__init__()
        self.relu, self.limit = nn.ReLU(), limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.relu(x), max=self.limit)


def split_relu6(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.ReLU6 replaced by `ClampedReLU` (identical outputs)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in module.named_children():
            if type(child) is nn.ReLU6:
                setattr(module, child_name, ClampedReLU())
    return model


def quantize_static_fx(model: nn.Module, calib: torch.Tensor | Sequence[torch.Tensor], *, backend: str,
                       qconfig: str = "default", batch_size: int = 64, split_relu6_first: bool = True,
                       float_layers: Sequence[str] = (), equalize: bool = False,
                       bias_correction: bool = False) -> nn.Module:
    """Static INT8 PTQ in FX graph mode; `model` itself is left untouched.

    Args:
        model: float model.
        calib: calibration images (N, C, H, W), or a list of input batches of different shapes.
        backend: quantized engine ("x86", "fbgemm", "qnnpack").
        qconfig: "default" (torch's mapping for the backend), "custom" (`custom_qconfig`) or "vnni"
            (`vnni_qconfig_mapping`).
        batch_size: calibration batch size.
        split_relu6_first: quantize `split_relu6(model)` (same function; MobileNetV2 on the ImageNet
            sample, custom QConfig: top-1 agreement with FP32 88.3% -> 91.3%, SQNR 10.7 -> 12.3 dB).
        float_layers: module names kept in float (their inputs dequantized), e.g. from `fallback`.
        equalize: cross-layer equalization with bias absorption first (`equalize.cross_layer_equalize`;
            ReLU6 between paired convs becomes ReLU: not the same float function). MobileNetV2, vnni: it
            lowers agreement (92.0% -> 88.3%); with `bias_correction` 93.5%, below bias correction alone.
        bias_correction: empirical bias correction after calibration (`bias_correction.correct_bias_fx`;
            `calib` must then be one image tensor). MobileNetV2, vnni: agreement 92.0% -> 94.0%, +30-35 s.
    Returns:
        The converted INT8 GraphModule (attribute `quant_engine` names its engine).
    Raises:
        BackendUnsupported: engine not in this torch build.
    """
    check_choice(qconfig, "qconfig", QCONFIGS)
    with quant_engine(backend), quiet(), torch.no_grad():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        mapping = get_default_qconfig_mapping(backend)
        if qconfig == "custom":
            mapping.set_global(custom_qconfig(backend))  # keeps the fixed-qparams op entries
        elif qconfig == "vnni":
            mapping = vnni_qconfig_mapping(model, backend)
        for name in float_layers:
            mapping.set_module_name(name, None)
        example = calib[:1] if isinstance(calib, torch.Tensor) else calib[0]
        if equalize:
            model = cross_layer_equalize(model, bias_absorption=True)
        source = split_relu6(model) if split_relu6_first else copy.deepcopy(model)
        prepared = prepare_fx(source.eval(), mapping, (example,))
        for batch in batches(calib, batch_size):
            prepared(batch)
        if bias_correction:
            correct_bias_fx(prepared, calib, batch_size=batch_size)
        quantized = convert_fx(prepared)
    quantized.quant_engine = backend
    log.info("PTQ %s/%s: calibrated on %d samples", backend, qconfig, len(calib))
    return quantized


def linear_layers_called(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[str], list[str]]:
    """Names of the `nn.Linear` modules that `model`'s forward calls as modules, and of those it only
    reads the weights of (e.g. torchvision's Swin passes `attn.qkv.weight` to F.linear, and
    nn.MultiheadAttention its `out_proj.weight`): a forward hook fires only for the former."""
    called: set[str] = set()
    hooks = [module.register_forward_hook(lambda *_, name=name: called.add(name))
             for name, module in model.named_modules() if type(module) is nn.Linear]
    try:
        with torch.inference_mode():
            model.eval()(example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    linears = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    return [n for n in linears if n in called], [n for n in linears if n not in called]


def quantize_dynamic_linear(model: nn.Module, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Dynamic INT8 quantization of `nn.Linear` layers (weights int8, activations quantized per batch).

    With `example_inputs`, only the Linear layers the forward calls as modules are swapped: a layer whose
    weight the model reads directly would hand a method instead of a tensor to F.linear (Swin fails so)
    and stays float32; the count of such layers is logged."""
    with quant_engine("x86"), quiet():
        from torch.ao.quantization import quantize_dynamic

        spec: Any = {nn.Linear}
        if example_inputs is not None:
            called, functional = linear_layers_called(model, example_inputs)
            spec = {name: torch.ao.quantization.default_dynamic_qconfig for name in called}
            if functional:
                log.info("dynamic quantization: %d Linear layers are used through their weights (e.g. %s) and "
                         "stay float32", len(functional), functional[0])
        quantized = quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)
    quantized.quant_engine = "x86"
    convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in quantized.modules())
    log.info("dynamic quantization: PyTorch quantizes only Linear/RNN layers dynamically; "
             "%d Conv2d layers stay float32 (only the Linear layers are INT8)", convs)
    return quantized


@functools.lru_cache(maxsize=1)
def fp16_cpu_compute() -> str:
    """Measure whether a half-precision conv runs natively on this CPU (else inference upcasts)."""
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    try:
        y = F.conv2d(x.half(), w.half(), padding=1)
        ref = F.conv2d(x.half().float(), w.half().float(), padding=1)
        native = y.dtype == torch.float16 and bool(torch.allclose(y.float(), ref, atol=0.05, rtol=0.01))
    except (RuntimeError, NotImplementedError) as exc:
        log.info("fp16 conv on CPU unavailable (%s)", str(exc).splitlines()[0][:120])
        native = False
    return FP16_NATIVE if native else FP16_UPCAST


class HalfPrecision(nn.Module):
    """Float32 in/out around a half-precision model (or its fp16-rounded fp32 copy without fp16 CPU
    kernels)."""

    def __init__(self, model: nn.Module, native: bool) -> None:
        super().__init__()
        self.native = native
        self.model = model.half() if native else model.half().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            return self.model(x.half()).float()
        return self.model(x)


def to_fp16(model: nn.Module) -> nn.Module:
    """Half-precision copy taking float32 input; see `fp16_cpu_compute` for how it is computed."""
    compute = fp16_cpu_compute()
    log.info("fp16 variant: CPU inference computes as '%s'", compute)
    return HalfPrecision(copy.deepcopy(model).eval(), native=compute == FP16_NATIVE)


def prepare_qat(model: nn.Module, example_inputs: Any, *, backend: str = "x86") -> nn.Module:
    """FX QAT preparation (fused Conv-BN with fake-quant) of a copy of `model`, in train mode."""
    example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with quant_engine(backend), quiet():
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        prepared = prepare_qat_fx(copy.deepcopy(model).train(), get_default_qat_qconfig_mapping(backend),
                                  example_inputs)
    prepared.quant_engine = backend
    return prepared


def freeze_qat_observers(model: nn.Module) -> None:
    """Stop updating quantization ranges (fake-quant keeps applying the frozen ones)."""
    from torch.ao.quantization import disable_observer

    model.apply(disable_observer)


def freeze_qat_bn(model: nn.Module) -> None:
    """Freeze BN running statistics of the fused QAT Conv-BN modules."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats

    model.apply(freeze_bn_stats)


def convert_qat(model: nn.Module) -> nn.Module:
    """Convert a QAT-trained model (copy, eval mode) to a real INT8 GraphModule."""
    backend = getattr(model, "quant_engine", "x86")
    with quant_engine(backend), quiet():
        from torch.ao.quantization.quantize_fx import convert_fx

        quantized = convert_fx(copy.deepcopy(model).eval())
    quantized.quant_engine = backend
    return quantized


def layer_summary(model: nn.Module) -> dict[str, Any]:
    """Count compute layers (conv/linear) that run quantized vs float, by type name."""
    from torch.ao.nn import quantized as nnq

    qtypes = (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d, nnq.ConvTranspose1d, nnq.ConvTranspose2d,
              nnq.ConvTranspose3d, nnq.Linear)  # subclasses: ConvReLU2d, dynamic Linear, LinearReLU
    summary: dict[str, Any] = {"quantized": 0, "float": 0, "quantized_layers": {}, "float_layers": {}}
    for module in model.modules():
        kind = "quantized" if isinstance(module, qtypes) else \
            "float" if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) else None
        if kind:
            name = type(module).__name__
            summary[kind] += 1
            summary[f"{kind}_layers"][name] = summary[f"{kind}_layers"].get(name, 0) + 1
    return summary


def save_torchscript(model: nn.Module, example_inputs: Any, path: str | Path,
                     metadata: dict[str, Any] | None = None) -> None:
    """Trace and freeze `model`, write it atomically as TorchScript with engine metadata as an extra file."""
    example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    engine = getattr(model, "quant_engine", None)
    meta = {"quant_engine": engine or torch.backends.quantized.engine, **(metadata or {})}
    ctx = quant_engine(engine) if engine else contextlib.nullcontext()
    with ctx, quiet(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), example_inputs, check_trace=False)
        # Freezing inlines submodules and turns weights into constants: the per-module code that
        # dominates small TorchScript files goes (resnet20 INT8: 171 KB -> 77 KB), logits unchanged.
        traced = torch.jit.freeze(traced, optimize_numerics=False)  # no conv-BN refolding: same logits
        with atomic_write(path, "wb") as handle:
            torch.jit.save(traced, handle, _extra_files={META_FILE: json.dumps(meta)})


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The `edgecompress.json` extra file of a TorchScript archive (plain zip; no model load)."""
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")), None)
        return json.loads(archive.read(name)) if name else {}


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Set the artifact's quantized engine, then `torch.jit.load` it (weights are re-packed on load)."""
    engine = read_torchscript_metadata(path).get("quant_engine")
    if engine:
        check_backend(engine)
        torch.backends.quantized.engine = engine  # must stay set for inference, so not restored
    with quiet():
        return torch.jit.load(str(path), map_location="cpu")


def torchscript_weights_bytes(path: str | Path) -> int:
    """Bytes of tensor records in a TorchScript archive: `data/` (module attributes) and `constants/`
    (a frozen module's weights)."""
    with zipfile.ZipFile(path) as archive:
        return int(sum(i.file_size for i in archive.infolist()
                       if ("/data/" in i.filename or "/constants/" in i.filename) and not i.filename.endswith(".pkl")))
