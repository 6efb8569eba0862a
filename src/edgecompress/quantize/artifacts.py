"""Variants as artifacts: each registry entry (`config.VARIANTS`) built by its builder, written as a
self-contained file (TorchScript, ONNX or OpenVINO IR, loadable without edgecompress), reloaded from
disk and measured there, never in memory.

A builder is a function registered with `@builder("<name>")`:
`build(model, *, calib, config, path, qat_train, **options) -> (torch model or None, extra settings)`.
It writes the artifact to `path` itself (ONNX) or returns the torch model to be saved as TorchScript.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.goals import target
from edgecompress.quantize import fx, onnx, openvino
from edgecompress.quantize.config import RUNTIME_SUFFIX, VARIANTS, QuantizeConfig

Builder = Callable[..., tuple[nn.Module | None, dict[str, Any]]]
BUILDERS: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    """Register a variant builder under `name` (the `builder` field of registry entries)."""
    def register(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn
    return register


@builder("static_ptq")
def _static_ptq(model, *, calib, config, path, qat_train, backend: str, qconfig: str, float_layers=()):
    fx.check_backend(backend)
    return fx.quantize_static_fx(model, calib, backend=backend, qconfig=qconfig, float_layers=float_layers,
                                 batch_size=config.calibration_batch_size), {}


@builder("dynamic")
def _dynamic(model, *, calib, config, path, qat_train):
    return fx.quantize_dynamic_linear(model), {}


@builder("fp16")
def _fp16(model, *, calib, config, path, qat_train):
    return fx.to_fp16(model), {"compute": fx.fp16_cpu_compute()}


@builder("qat")
def _qat(model, *, calib, config, path, qat_train):
    if qat_train is None:
        raise EdgecompressError("variant 'qat' needs a training function")
    fx.check_backend("x86")
    prepared = fx.prepare_qat(model, calib[:2], backend="x86")
    qat_train(prepared)
    return fx.convert_qat(prepared), {}


@builder("onnx_export")
def _onnx_export(model, *, calib, config, path, qat_train):
    onnx.export_onnx(model, calib[:2], path)
    return None, {}


@builder("onnx_static")
def _onnx_static(model, *, calib, config, path, qat_train, float_layers=()):
    fp32 = artifact_path(path.parent, "onnx_fp32")  # quantize the FP32 export when it was built already
    with tempfile.TemporaryDirectory() as tmp:
        source = fp32 if fp32.is_file() else Path(tmp) / "fp32.onnx"
        if source != fp32:
            onnx.export_onnx(model, calib[:2], source)
        onnx.quantize_onnx_static(source, path, calib, batch_size=config.calibration_batch_size,
                                  nodes_to_exclude=float_layers, **config.onnx.ort_options())
    return None, {}


@builder("openvino_convert")
def _openvino_convert(model, *, calib, config, path, qat_train):
    openvino.convert_to_openvino(model, calib[:2], path)
    return None, {}


@builder("openvino_nncf")
def _openvino_nncf(model, *, calib, config, path, qat_train, float_layers=()):
    fp32 = artifact_path(path.parent, "openvino_fp32")  # quantize the FP32 IR when it was built already
    source = fp32 if fp32.is_file() else openvino.convert_to_openvino(model, calib[:2], path.with_name(".fp32.xml"))
    openvino.quantize_openvino(source, calib, path, batch_size=config.calibration_batch_size,
                               **config.openvino.nncf_options(float_layers))
    for leftover in (path.with_name(".fp32.xml"), path.with_name(".fp32.bin")):
        leftover.unlink(missing_ok=True)
    return None, {}


def _fx_layers(model: nn.Module, folder: Path, calib: torch.Tensor) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _onnx_layers(model: nn.Module, folder: Path, calib: torch.Tensor) -> list[str]:
    fp32 = artifact_path(folder, "onnx_fp32")
    if not fp32.is_file():
        onnx.export_onnx(model, calib[:2], fp32)
    return onnx.onnx_compute_nodes(fp32)


def _openvino_layers(model: nn.Module, folder: Path, calib: torch.Tensor) -> list[str]:
    fp32 = artifact_path(folder, "openvino_fp32")
    if not fp32.is_file():
        openvino.convert_to_openvino(model, calib[:2], fp32)
    return openvino.openvino_compute_nodes(fp32)


# builder -> the names of the layers it can keep in float (float fallback's candidates); a builder
# missing here (QAT, FP16, dynamic, exports) takes no float_layers.
FALLBACK_LAYERS: dict[str, Callable[[nn.Module, Path, torch.Tensor], list[str]]] = {
    "static_ptq": _fx_layers, "onnx_static": _onnx_layers, "openvino_nncf": _openvino_layers}


def fallback_candidates(name: str, model: nn.Module, folder: str | Path, calib: torch.Tensor) -> list[str] | None:
    """The layers variant `name` could keep in float (FP32 exports it needs are written to `folder`), or
    None when its builder has no per-layer fallback."""
    lister = FALLBACK_LAYERS.get(VARIANTS[name].builder)
    return None if lister is None else lister(model, Path(folder), calib)


@dataclass(frozen=True)
class _Runtime:
    """How an artifact of one file type is loaded and inspected."""

    load: Callable[[Path], Any]
    layers: Callable[[Path], dict[str, Any]] | None  # None: counted on the torch model it was saved from
    weights_bytes: Callable[[Path], int]
    size_bytes: Callable[[Path], int]


_RUNTIMES = {
    RUNTIME_SUFFIX["torch"]: _Runtime(fx.load_torchscript, None, fx.torchscript_weights_bytes, os.path.getsize),
    RUNTIME_SUFFIX["onnxruntime"]: _Runtime(onnx.OnnxModel, onnx.onnx_layer_summary, onnx.onnx_weights_bytes,
                                            os.path.getsize),
    RUNTIME_SUFFIX["openvino"]: _Runtime(openvino.OpenVINOModel, openvino.openvino_layer_summary,
                                         openvino.openvino_weights_bytes, openvino.openvino_artifact_bytes),
}


def _runtime(path: str | Path) -> _Runtime:
    suffix = Path(path).suffix
    if suffix not in _RUNTIMES:
        raise EdgecompressError(f"{path}: not a variant artifact (expected {', '.join(_RUNTIMES)})")
    return _RUNTIMES[suffix]


def artifact_path(out_dir: str | Path, name: str) -> Path:
    """Where variant `name` is written (the file type follows its runtime); "fp32" is the float model
    as TorchScript, the size reference."""
    suffix = VARIANTS[name].suffix if name in VARIANTS else ".ts"
    return Path(out_dir) / f"{name}{suffix}"


@dataclass
class BuiltVariant:
    """A variant's artifact on disk, the torch model it was saved from (None for ONNX) and how it was made."""

    path: Path
    model: nn.Module | None
    settings: dict[str, Any]


def build_variant(name: str, model: nn.Module, *, calib: torch.Tensor, config: QuantizeConfig,
                  out_dir: str | Path, qat_train: Any = None, float_layers: tuple[str, ...] = ()) -> BuiltVariant:
    """Build variant `name` from the float `model` and write its artifact.

    Args:
        calib: calibration images (normalised, N x C x H x W); `calib[:2]` traces exports.
        qat_train: callable(prepared_model) -> None that fine-tunes a QAT-prepared model (the stage
            passes the shared training loop); required for "qat".
        float_layers: layers kept in float (names from `fallback_candidates`); only builders with a
            candidate lister take them.
    Raises:
        BackendUnsupported: the variant's engine is not in this torch build.
    """
    if name not in VARIANTS:
        raise EdgecompressError(f"quantize.variants: unknown variant '{name}'; allowed: {', '.join(VARIANTS)}")
    entry = VARIANTS[name]
    path = artifact_path(out_dir, name)
    options = {**entry.options, **({"float_layers": tuple(float_layers)} if float_layers else {})}
    built, extra = BUILDERS[entry.builder](model, calib=calib, config=config, path=path, qat_train=qat_train,
                                           **options)
    if built is not None:
        fx.save_torchscript(built, calib[:2], path, metadata={"variant": name})
    return BuiltVariant(path, built, {**entry.describe(config), **extra})


def load_artifact(path: str | Path) -> Any:
    """Reload a variant from disk (TorchScript, ONNX or OpenVINO IR) as a callable x -> logits."""
    return _runtime(path).load(Path(path))


def max_abs_logit_diff(path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Max |logit difference| between an artifact reloaded from disk and the torch model on `inputs`
    (an FP32 export's fidelity)."""
    with torch.no_grad():
        reference = model.eval()(inputs)
        return float((load_artifact(path)(inputs) - reference).abs().max())


def artifact_layer_summary(path: str | Path, built: nn.Module | None) -> dict[str, Any]:
    """Quantized vs float compute layers: from the torch model it was saved from, or from the graph."""
    layers = _runtime(path).layers
    return fx.layer_summary(built) if layers is None else layers(Path(path))


def weights_payload_bytes(path: str | Path) -> int:
    """Bytes of tensor data inside an artifact: on tiny models the file size is dominated by
    serialized code, so this shows the weight compression."""
    return _runtime(path).weights_bytes(Path(path))


def artifact_sha256(path: str | Path) -> str:
    """Content hash of an artifact's file(s) (an OpenVINO IR: its `.xml` then its `.bin`), recorded when the
    quantize stage measures it and verified by every later load (`bench.chain.load_predict`)."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
        with part.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def artifact_bytes(path: str | Path) -> int:
    """A file's size on disk; for an OpenVINO IR, its `.xml` and `.bin` together."""
    runtime = _RUNTIMES.get(Path(path).suffix)
    return runtime.size_bytes(Path(path)) if runtime else os.path.getsize(path)


def measure_variant(variant: BuiltVariant, *, evaluate_fn: Any, fp32: dict[str, Any],
                    fp32_size_mb: float) -> dict[str, Any]:
    """Metrics of one variant, measured on the artifact reloaded from disk (not the in-memory model).

    Args:
        evaluate_fn: callable(model) -> `train.evaluate` result on the test split.
        fp32: `train.evaluate` result of the float pruned model (accuracy and predictions).
        fp32_size_mb: size of the float model's TorchScript artifact, the size reference.
    """
    path = variant.path
    test = evaluate_fn(load_artifact(path))
    size = artifact_bytes(path) / 1e6
    return {
        "accuracy": round(test["accuracy"], 6),
        "accuracy_delta_points": round(100 * (test["accuracy"] - fp32["accuracy"]), 3),
        "agreement_with_fp32": round((test["preds"] == fp32["preds"]).float().mean().item(), 6),
        "size_mb": round(size, 4), "weights_mb": round(weights_payload_bytes(path) / 1e6, 4),
        "size_ratio_vs_fp32": round(size / fp32_size_mb, 4),
        "artifact": path.name, "sha256": artifact_sha256(path), "layers": artifact_layer_summary(path, variant.model),
        "settings": variant.settings}


def quality_targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The project's quality goals checked on the measured variants (skipped ones are left out):
    ptq_x86 within 1.0 point and qat within 0.5 point of FP32; fully INT8 artifacts <= 0.30 x FP32 size."""
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
