"""The zoo's models on the other runtimes (stage zoo_quantize): `torch.compile`, ONNX Runtime FP32 and
static INT8, OpenVINO FP32 and NNCF INT8, each built with the chain's backends (`quantize.onnx`,
`quantize.openvino`), reloaded from its file and measured on the same images with the same timer as
the eager model, so that an INT8 speed-up can be quoted against the fastest FP32 runtime rather than
against eager PyTorch alone."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgecompress.quantize.artifacts import artifact_bytes, artifact_layer_summary
from edgecompress.quantize.config import OnnxInt8Config, OpenVINOConfig
from edgecompress.quantize.fallback import within_budget
from edgecompress.quantize.onnx import OnnxModel, export_onnx, onnx_compute_nodes, quantize_onnx_static
from edgecompress.quantize.openvino import (OpenVINOModel, convert_to_openvino, openvino_compute_nodes,
                                            quantize_openvino)
from edgecompress.zoo.measure import (Measurement, failure, inference_predict, latency_at_batch_sizes, measure,
                                      predict_all, topk_from_logits)
from edgecompress.zoo.params import RUNTIMES  # noqa: F401 - the names this module measures, validated there

log = logging.getLogger(__name__)

FP32_RUNTIMES = ("compiled", "onnx_fp32", "openvino_fp32")  # with eager: the best-FP32 reference's candidates
INT8_RUNTIMES = ("onnx_int8", "openvino_int8")


def _compiled(model: nn.Module, images: torch.Tensor, batch_sizes: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    compiled = torch.compile(model)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # dynamo guards on grad mode; no_grad is its best-supported inference mode
            return compiled(x)

    start = time.perf_counter()
    for b in batch_sizes:  # every compilation (first shape, then the dynamic one) happens here, not in warm-up
        predict(images[:b])
    return predict, {"compile_s": round(time.perf_counter() - start, 3)}


def _build(name: str, model: nn.Module, calibration: torch.Tensor, folder: Path, *, threads: int,
           calibration_batch_size: int, openvino: OpenVINOConfig, onnx: OnnxInt8Config,
           float_layers: tuple[str, ...] = ()) -> tuple[Path, Callable]:
    """Write runtime `name`'s artifact under `folder` (the FP32 export first, when its INT8 needs it)
    and load it back as images -> logits; `float_layers` (ONNX / OpenVINO node names) stay float."""
    example = calibration[:2]
    if name.startswith("onnx"):
        fp32 = folder / "onnx_fp32.onnx"
        if not fp32.is_file():
            export_onnx(model, example, fp32)
        path = fp32 if name == "onnx_fp32" else folder / "onnx_int8.onnx"
        if name == "onnx_int8":
            quantize_onnx_static(fp32, path, calibration, batch_size=calibration_batch_size,
                                 nodes_to_exclude=float_layers, **onnx.ort_options())
        return path, OnnxModel(path, threads=threads).forward
    fp32 = folder / "openvino_fp32.xml"
    if not fp32.is_file():
        convert_to_openvino(model, example, fp32)
    path = fp32 if name == "openvino_fp32" else folder / "openvino_int8.xml"
    if name == "openvino_int8":
        quantize_openvino(fp32, calibration, path, batch_size=calibration_batch_size,
                          **openvino.nncf_options(float_layers))
    return path, OpenVINOModel(path, threads=threads).forward


@dataclass(frozen=True)
class Gate:
    """The zoo's quality gate: judged on labelled images that are never evaluated, its own (`zoo.gate_images`,
    never calibrated with either) or else the calibration images."""

    max_accuracy_drop: float | None  # top-1 points vs FP32 on those images; None = off
    max_float_layers: int
    targets: tuple[int, ...]  # the classes of the images it judges on
    images: torch.Tensor | None = None  # its own images, in this model's preprocessing; None = the calibration images


def _gated_build(name: str, build: Callable[[tuple[str, ...]], tuple[Path, Callable]], model: nn.Module,
                 calibration: torch.Tensor, folder: Path, gate: Gate, how: Measurement) -> tuple[Path, Callable, dict]:
    """Build INT8 runtime `name` through the quality gate (`quantize.fallback.within_budget`): judged on the
    gate's images (else the labelled calibration images), float nodes named in the ONNX / OpenVINO graph."""
    judged = calibration if gate.images is None else gate.images

    def top1(predictor: Callable) -> float:
        return topk_from_logits(predict_all(predictor, judged, how.eval_batch_size), gate.targets, (1,))["top1"]

    def nodes() -> list[str]:
        return (onnx_compute_nodes(folder / "onnx_fp32.onnx") if name.startswith("onnx")
                else openvino_compute_nodes(folder / "openvino_fp32.xml"))

    def latency(built: tuple[Path, Callable]) -> float:
        # watched and retried like every zoo timing; its load is not recorded (the gate keeps a median only)
        return latency_at_batch_sizes(built[1], calibration, how, (8,), f"{name} gate")["latency_ms"]["8"]["median"]

    reference = top1(inference_predict(model)) if gate.max_accuracy_drop is not None else 0.0
    (path, predict), record = within_budget(build, lambda built: top1(built[1]), nodes, reference=reference,
                                            budget=gate.max_accuracy_drop, max_layers=gate.max_float_layers,
                                            timer=latency)
    judged_on = (f"{len(judged)} {'calibration' if gate.images is None else 'gate'} image"
                 f"{'' if len(judged) == 1 else 's'}")
    return path, predict, {**record, "judged_on": judged_on} if record else {}


def runtime_analysis(model: nn.Module, images: torch.Tensor, targets: tuple[int, ...], calibration: torch.Tensor,
                     how: Measurement, *, names: tuple[str, ...], batch_sizes: tuple[int, ...], threads: int,
                     calibration_batch_size: int, openvino: OpenVINOConfig, onnx: OnnxInt8Config,
                     gate: Gate | None = None) -> dict[str, dict[str, Any]]:
    """Every runtime of `names` for one model: top-1/top-5, agreement and SQNR against the eager FP32
    logits, file size, compute layers (INT8 vs float) and latency at `batch_sizes`. A runtime that
    cannot take the model (an export or conversion failure) is {"skipped": reason}; the others go on."""
    reference = predict_all(inference_predict(model), images, how.eval_batch_size)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="zoo-runtimes-") as tmp:
        for name in names:
            try:
                if name == "compiled":
                    predict, extra = _compiled(model, images, batch_sizes)
                else:
                    build = partial(_build, name, model, calibration, Path(tmp), threads=threads,
                                    calibration_batch_size=calibration_batch_size, openvino=openvino, onnx=onnx)
                    if gate is not None and name in INT8_RUNTIMES:
                        path, predict, record = _gated_build(name, lambda layers: build(float_layers=layers), model,
                                                             calibration, Path(tmp), gate, how)
                    else:
                        (path, predict), record = build(), {}
                    extra = {"size_mb": round(artifact_bytes(path) / 1e6, 4),
                             "layers": artifact_layer_summary(path, None), **({"gate": record} if record else {})}
                    if name in INT8_RUNTIMES:
                        extra["calibration_images"] = len(calibration)
                result = measure(predict, images, targets, how, batch_sizes=batch_sizes, reference=reference,
                                 label=name)
            except Exception as exc:  # noqa: BLE001 - exporters and compilers raise many types
                results[name] = failure(exc, f"{name}")
                continue
            results[name] = {**extra, **result}
            log.info("%s: top-1 %.3f, %s ms/image at batch %d", name, result["top1"],
                     result["latency_ms"][str(batch_sizes[-1])]["median"], batch_sizes[-1])
    return results
