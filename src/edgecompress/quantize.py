"""Every quantization and export backend of the pipeline, behind one module.

Stage scripts only call the functions here, so the PyTorch flow (FX graph mode today, torchao's pt2e
later) can be swapped in one place. Variants:

- `ptq_<backend>` (x86/fbgemm/qnnpack): static INT8 post-training quantization, FX graph mode
  (`prepare_fx` fuses Conv-BN-ReLU and the residual add+ReLU), calibrated, `convert_fx`.
- `ptq_custom`: the same flow with a hand-written QConfig (histogram activations, per-channel symmetric
  weights) on the x86 engine.
- `dynamic`: `quantize_dynamic` on `nn.Linear`; PyTorch has no dynamic Conv2d, so convs stay float.
- `fp16`: half-precision weights, wrapped to take and return float32.
- `qat`: FX quantization-aware training (`prepare_qat_fx`), then `convert_qat`.
- `onnx_fp32` / `onnx_int8`: ONNX export and ONNX Runtime static QDQ quantization.

Torch artifacts are frozen TorchScript (`torch.jit.trace` + `torch.jit.freeze` + `torch.jit.save`): a converted FX GraphModule
traces cleanly (it cannot be scripted in torch 2.14: FX emits `_torch_Tensor_` annotations that
TorchScript rejects) and loads with `torch.jit.load` alone. Packed INT8 weights are re-packed at load
time for the *current* `torch.backends.quantized.engine`, so a consumer must set the engine recorded
in the artifact's `edgecompress.json` extra file before loading (`load_torchscript` does that).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress import EdgecompressError
from edgecompress.io import atomic_path, atomic_write, publish

log = logging.getLogger(__name__)

STATIC_BACKENDS = ("x86", "fbgemm", "qnnpack")
VARIANTS = tuple(f"ptq_{b}" for b in STATIC_BACKENDS) + (
    "ptq_custom", "dynamic", "fp16", "qat", "onnx_fp32", "onnx_int8")
ONNX_OPSET = 18
FP16_NATIVE, FP16_UPCAST = "native fp16 on CPU", "upcast to fp32"
META_FILE = "edgecompress.json"  # TorchScript extra file: {"quant_engine": ..., ...}
# Known, understood deprecation noise from torch.ao / torch.jit / the legacy ONNX exporter.
_NOISE = ("torch.ao.quantization is deprecated", "Please use quant_min and quant_max",
          "quantized tensor creation functions", "`torch.jit.", "legacy TorchScript-based ONNX",
          "The feature will be removed")
_deprecation_logged = False


class BackendUnsupported(EdgecompressError):
    """The requested quantized engine is not available in this torch build (stage: skip variant)."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence known deprecation warnings and the ONNX toolchain's INFO chatter (per-pass logs);
    log once per process that the deprecated APIs are in use."""
    global _deprecation_logged
    if not _deprecation_logged:
        _deprecation_logged = True
        log.info("torch.ao.quantization (FX) and torch.jit are deprecated in torch %s but work; "
                 "their deprecation warnings are suppressed (migration target: torchao pt2e)",
                 torch.__version__)
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "onnxruntime.quantization")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for text in _NOISE:
            warnings.filterwarnings("ignore", message=f".*{text}")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


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


@dataclass(frozen=True)
class QuantizeConfig:
    """`quantize` section of params.yaml; validated on construction."""

    backends: tuple[str, ...] = STATIC_BACKENDS
    calibration_samples: int = 512
    calibration_batch_size: int = 64
    qat_epochs: int = 2
    qat_freeze_observer_epoch: int = 1
    qat_freeze_bn_epoch: int = 1
    qat_lr: float = 0.001
    variants: tuple[str, ...] = VARIANTS

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> EdgecompressError:
            return EdgecompressError(f"quantize.{key}={getattr(self, key)!r} is invalid; allowed: {allowed}")

        for key, allowed in (("backends", STATIC_BACKENDS), ("variants", VARIANTS)):
            value = getattr(self, key)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise bad(key, f"a list of {', '.join(allowed)}")
            object.__setattr__(self, key, tuple(value))  # YAML gives lists
            if any(v not in allowed for v in value):
                raise bad(key, ", ".join(allowed))
        for key, low in (("calibration_samples", 1), ("calibration_batch_size", 1), ("qat_epochs", 0),
                         ("qat_freeze_observer_epoch", 1), ("qat_freeze_bn_epoch", 0)):
            # observers need at least one epoch of data before their ranges can be frozen
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(key, f"an integer >= {low}")
        if isinstance(self.qat_lr, bool) or not isinstance(self.qat_lr, (int, float)) \
                or not math.isfinite(self.qat_lr) or self.qat_lr <= 0:
            raise bad("qat_lr", "a finite number > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for JSON/YAML output."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def calibration_tensors(loader: Iterable, num_samples: int) -> torch.Tensor:
    """Concatenate the first `num_samples` images of a DataLoader yielding `(x, y)` batches."""
    if num_samples < 1:
        raise EdgecompressError(f"quantize.calibration_samples={num_samples} is invalid; allowed: >= 1")
    chunks, count = [], 0
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        chunks.append(images[: num_samples - count])
        count += len(chunks[-1])
        if count >= num_samples:
            break
    if not chunks:
        raise EdgecompressError("calibration data loader is empty")
    if count < num_samples:
        log.warning("only %d calibration samples available (%d requested)", count, num_samples)
    return torch.cat(chunks).detach().cpu()


def _batches(data: torch.Tensor | Sequence[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if not isinstance(data, torch.Tensor):  # inputs of different shapes (e.g. detection backbones): one by one
        yield from data
        return
    for start in range(0, len(data), batch_size):
        yield data[start:start + batch_size]


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


def quantize_static_fx(model: nn.Module, calib: torch.Tensor | Sequence[torch.Tensor], *, backend: str,
                       qconfig: str = "default", batch_size: int = 64) -> nn.Module:
    """Static INT8 PTQ in FX graph mode; `model` itself is left untouched.

    Args:
        model: float model.
        calib: calibration images (N, C, H, W), or a list of input batches of different shapes.
        backend: quantized engine ("x86", "fbgemm", "qnnpack").
        qconfig: "default" (torch's mapping for the backend) or "custom" (`custom_qconfig`).
        batch_size: calibration batch size.
    Returns:
        The converted INT8 GraphModule (attribute `quant_engine` names its engine).
    Raises:
        BackendUnsupported: engine not in this torch build.
    """
    if qconfig not in ("default", "custom"):
        raise EdgecompressError(f"qconfig='{qconfig}' is invalid; allowed: default, custom")
    with quant_engine(backend), _quiet(), torch.no_grad():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        mapping = get_default_qconfig_mapping(backend)
        if qconfig == "custom":
            mapping.set_global(custom_qconfig(backend))  # keeps the fixed-qparams op entries
        example = calib[:1] if isinstance(calib, torch.Tensor) else calib[0]
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (example,))
        for batch in _batches(calib, batch_size):
            prepared(batch)
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
    with quant_engine("x86"), _quiet():
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
    with quant_engine(backend), _quiet():
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
    with quant_engine(backend), _quiet():
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
    with ctx, _quiet(), torch.no_grad():
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
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


def export_onnx(model: nn.Module, example_inputs: Any, path: str | Path) -> None:
    """Export to ONNX (opset 18, dynamic batch, input "input", output "logits"), check, write atomically.

    The torch.export-based exporter (dynamo=True, default since torch 2.9) is used; the deprecated
    TorchScript exporter is only a fallback for models torch.export cannot capture.
    """
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if len(x) < 2:
        x = torch.cat([x, x])  # torch.export specialises a batch size of 1, breaking the dynamic axis
    common = dict(opset_version=ONNX_OPSET, input_names=["input"], output_names=["logits"])
    model = model.eval()
    with atomic_path(path, suffix=".onnx") as tmp:
        try:
            with _quiet(), torch.no_grad():
                try:
                    torch.onnx.export(model, (x,), tmp, dynamo=True, external_data=False, verbose=False,
                                      dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
                except Exception as exc:  # noqa: BLE001 - any capture failure: try the legacy exporter
                    log.warning("dynamo ONNX export failed (%s); using the legacy TorchScript exporter",
                                str(exc).splitlines()[0][:200])
                    torch.onnx.export(model, (x,), tmp, dynamo=False,
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)
            import onnx

            proto = onnx.load(tmp)
            for node in proto.graph.node:  # stack traces hold absolute source paths: keep hashes path-free
                del node.metadata_props[:]
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp + ".data")  # external data an exporter may have written beside it


def _make_reader(input_name: str, calib: torch.Tensor, batch_size: int) -> Any:
    """An ORT CalibrationDataReader over in-memory tensors (class built lazily: ORT imports are slow)."""
    from onnxruntime.quantization import CalibrationDataReader

    class TensorReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{input_name: b.numpy()} for b in _batches(calib.float().contiguous(), batch_size)])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return TensorReader()


def quantize_onnx_static(fp32_path: str | Path, out_path: str | Path, calib: torch.Tensor, *,
                         per_channel: bool = True, batch_size: int = 64,
                         op_types: Sequence[str] | None = None) -> None:
    """ONNX Runtime static INT8 (QDQ, int8 weights, uint8 activations, MinMax calibration).

    Args:
        op_types: only these ONNX op types are quantized (None = ORT's default set). Detectors pass
            ["Conv"]: their decode tail concatenates pixel coordinates (0..640) with probabilities
            (0..1) in one tensor, which a single uint8 scale would flatten to zero.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        tmp = os.path.abspath(tmp)  # the ORT calls below run with it as the cwd
        source, pre, out = os.path.abspath(fp32_path), os.path.join(tmp, "pre.onnx"), os.path.join(tmp, "int8.onnx")
        try:  # shape inference + graph cleanup: ORT quantizes more ops with it, and warns without
            # inside the temporary folder: ORT's symbolic shape inference leaves scratch files in the cwd
            with _quiet(), contextlib.chdir(tmp):
                quant_pre_process(source, pre)
            source = pre
        except Exception as exc:  # noqa: BLE001 - optional step
            log.warning("onnx quant_pre_process failed (%s); quantizing the raw export", exc)
        input_name = _onnx_input_name(source)
        with _quiet(), contextlib.chdir(tmp):
            quantize_static(source, out, _make_reader(input_name, calib, batch_size),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            op_types_to_quantize=list(op_types) if op_types else None)
        publish(out, out_path)
    log.info("ONNX INT8 (QDQ, per_channel=%s): calibrated on %d samples", per_channel, len(calib))


def _onnx_input_name(path: str | Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def run_onnx(onnx_path: str | Path, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of an ONNX model on `inputs`, via ONNX Runtime's CPUExecutionProvider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs.float().cpu().numpy()})
    return torch.from_numpy(output)


def onnx_max_abs_diff(onnx_path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Max |logit difference| between ONNX Runtime and the PyTorch model on `inputs`."""
    with torch.no_grad():
        reference = model.eval()(inputs)
    return float((run_onnx(onnx_path, inputs) - reference).abs().max())


# ----------------------------------------------------------------------------------------------
# Variants as artifacts: build, save, reload, measure
TORCHSCRIPT_SUFFIX, ONNX_SUFFIX = ".ts", ".onnx"


def variant_names(config: QuantizeConfig) -> list[str]:
    """The variants a config asks for, with `ptq_<backend>` expanded from `config.backends`."""
    names = []
    for name in config.variants:
        if name.startswith("ptq_") and name != "ptq_custom" and name[4:] not in config.backends:
            continue
        names.append(name)
    return names


def artifact_path(out_dir: str | Path, name: str) -> Path:
    """Where variant `name` is written: TorchScript for torch variants, ONNX for ORT ones."""
    return Path(out_dir) / f"{name}{ONNX_SUFFIX if name.startswith('onnx_') else TORCHSCRIPT_SUFFIX}"


def variant_settings(name: str, config: QuantizeConfig) -> dict[str, Any]:
    """How a variant is produced, written next to its numbers in the metrics."""
    calib = {"calibration_samples": config.calibration_samples}
    if name.startswith("ptq_") and name != "ptq_custom":
        return {"method": "FX static PTQ", "backend": name[4:], "qconfig": f"default qconfig mapping ({name[4:]})",
                **calib}
    return {
        "ptq_custom": {"method": "FX static PTQ", "backend": "x86", **calib,
                       "qconfig": "HistogramObserver activations (quint8, full range), 7-bit per-channel symmetric "
                                  "MinMaxObserver weights (qint8)"},
        "dynamic": {"method": "dynamic quantization (quantize_dynamic)", "backend": "x86",
                    "note": "PyTorch dynamic quantization covers Linear/RNN only: Conv2d layers stay float32"},
        "fp16": {"method": "half-precision weights", "compute": fp16_cpu_compute()},
        "qat": {"method": "FX quantization-aware training", "backend": "x86", "epochs": config.qat_epochs,
                "lr": config.qat_lr, "freeze_observer_epoch": config.qat_freeze_observer_epoch,
                "freeze_bn_epoch": config.qat_freeze_bn_epoch},
        "onnx_fp32": {"method": "ONNX export (torch.export-based exporter)", "opset": ONNX_OPSET},
        "onnx_int8": {"method": "ONNX Runtime static quantization", "format": "QDQ", "per_channel": True,
                      "weights": "int8", "activations": "uint8", **calib},
    }[name]


def build_variant(name: str, model: nn.Module, *, calib: torch.Tensor, config: QuantizeConfig,
                  out_dir: str | Path, qat_train: Any = None) -> tuple[Path, nn.Module | None]:
    """Build variant `name` from the float `model` and write its artifact.

    Args:
        calib: calibration images (normalised, N x C x H x W).
        qat_train: callable(prepared_model) -> None that fine-tunes a QAT-prepared model (the stage
            passes the shared training loop); required for "qat".
    Returns:
        (artifact path, the in-memory torch model or None for ONNX variants).
    Raises:
        BackendUnsupported: the variant's engine is not in this torch build.
    """
    path = artifact_path(out_dir, name)
    example = calib[:2]
    built: nn.Module | None = None
    if name.startswith("ptq_"):
        backend = "x86" if name == "ptq_custom" else name[4:]
        check_backend(backend)
        built = quantize_static_fx(model, calib, backend=backend, qconfig="custom" if name == "ptq_custom" else "default",
                                   batch_size=config.calibration_batch_size)
    elif name == "dynamic":
        built = quantize_dynamic_linear(model)
    elif name == "fp16":
        built = to_fp16(model)
    elif name == "qat":
        if qat_train is None:
            raise EdgecompressError("variant 'qat' needs a training function")
        check_backend("x86")
        prepared = prepare_qat(model, example, backend="x86")
        qat_train(prepared)
        built = convert_qat(prepared)
    elif name == "onnx_fp32":
        export_onnx(model, example, path)
    elif name == "onnx_int8":
        fp32 = artifact_path(out_dir, "onnx_fp32")
        with tempfile.TemporaryDirectory() as tmp:
            source = fp32 if fp32.is_file() else Path(tmp) / "fp32.onnx"
            if source != fp32:
                export_onnx(model, example, source)
            quantize_onnx_static(source, path, calib, batch_size=config.calibration_batch_size)
    else:
        raise EdgecompressError(f"quantize.variants: unknown variant '{name}'; allowed: {', '.join(VARIANTS)}")
    if built is not None:
        save_torchscript(built, example, path, metadata={"variant": name})
    return path, built


class OnnxClassifier:
    """ONNX Runtime session with a torch-like call: logits = runner(x). One session, reused."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def eval(self) -> "OnnxClassifier":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.float().contiguous().numpy()})
        return torch.from_numpy(out)


def load_artifact(path: str | Path) -> Any:
    """Reload a variant from disk (TorchScript or ONNX) as a callable x -> logits."""
    return OnnxClassifier(path) if str(path).endswith(ONNX_SUFFIX) else load_torchscript(path)


def artifact_layer_summary(path: str | Path, built: nn.Module | None) -> dict[str, Any]:
    """Quantized vs float compute layers: from the torch model, or from the ONNX graph (a Conv/Gemm/
    MatMul whose weight comes out of a DequantizeLinear node runs on INT8 weights)."""
    if built is not None:
        return layer_summary(built)
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    summary: dict[str, Any] = {"quantized": 0, "float": 0, "quantized_layers": {}, "float_layers": {}}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul"):
            kind = "quantized" if node.op_type.startswith("QLinear") or node.input[1] in dequantized else "float"
            summary[kind] += 1
            summary[f"{kind}_layers"][node.op_type] = summary[f"{kind}_layers"].get(node.op_type, 0) + 1
    return summary


def weights_payload_bytes(path: str | Path) -> int:
    """Bytes of tensor data inside an artifact (TorchScript zip `data/` records, or ONNX initializers):
    on tiny models the file size is dominated by serialized code, so this shows the weight compression."""
    if str(path).endswith(ONNX_SUFFIX):
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path), load_external_data=False).graph
        return int(sum(numpy_helper.to_array(t).nbytes for t in graph.initializer))
    with zipfile.ZipFile(path) as archive:
        # Tensor records: `data/` (module attributes) and `constants/` (a frozen module's weights).
        return int(sum(i.file_size for i in archive.infolist()
                       if ("/data/" in i.filename or "/constants/" in i.filename) and not i.filename.endswith(".pkl")))


def measure_variant(name: str, path: Path, built: nn.Module | None, *, config: QuantizeConfig,
                    evaluate_fn: Any, fp32: dict[str, Any], fp32_size_mb: float) -> dict[str, Any]:
    """Metrics of one variant, measured on the artifact reloaded from disk (not the in-memory model).

    Args:
        evaluate_fn: callable(model) -> `train.evaluate` result on the test split.
        fp32: `train.evaluate` result of the float pruned model (accuracy and predictions).
        fp32_size_mb: size of the float model's TorchScript artifact, the size reference.
    """
    test = evaluate_fn(load_artifact(path))
    size = os.path.getsize(path) / 1e6
    return {
        "accuracy": round(test["accuracy"], 6),
        "accuracy_delta_points": round(100 * (test["accuracy"] - fp32["accuracy"]), 3),
        "agreement_with_fp32": round((test["preds"] == fp32["preds"]).float().mean().item(), 6),
        "size_mb": round(size, 4), "weights_mb": round(weights_payload_bytes(path) / 1e6, 4),
        "size_ratio_vs_fp32": round(size / fp32_size_mb, 4),
        "artifact": path.name, "layers": artifact_layer_summary(path, built),
        "settings": variant_settings(name, config)}


def quality_targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The project's quality goals checked on the measured variants (skipped ones are left out):
    ptq_x86 within 1.0 point and qat within 0.5 point of FP32; fully INT8 artifacts <= 0.30 x FP32 size."""
    from edgecompress.goals import target

    goals = {}
    for name, limit in (("ptq_x86", 1.0), ("qat", 0.5)):
        if "accuracy" in results.get(name, {}):
            goals[f"{name}_accuracy_drop_points"] = target(-results[name]["accuracy_delta_points"], at_most=limit,
                                                           goal=f"within {limit} point of FP32 pruned")
    for name, entry in results.items():
        layers = entry.get("layers", {})
        if layers.get("quantized") and not layers.get("float"):
            goals[f"{name}_size_ratio"] = target(entry["size_ratio_vs_fp32"], at_most=0.30,
                                                 goal="<= 0.30 x FP32 pruned file size")
    return goals
