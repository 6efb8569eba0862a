"""Compressed variants of a detector, each evaluated exactly like the original (`detect_eval`'s
`inference.evaluate_detector`). Exportable families (the YOLO ones): ONNX Runtime FP32 and static
INT8 (`detection.compress.onnx`'s settings, calibrated on images the evaluation never sees), OpenVINO
FP32 and NNCF INT8, and FP16 on CUDA; prunable ones: structured pruning of the backbone with
Torch-Pruning (`detection.pruning`: the detection head's output convolutions are kept, so boxes and
classes keep their layout; optionally fine-tuned), and the pruned network on the same ONNX Runtime /
OpenVINO runtimes (`pruned_*`); torchvision detectors: FX static INT8 of the backbone (the heads stay
FP32). Which apply is read from the family's entry (`families.Family`); a variant that does not apply
is recorded as skipped with the reason.

Each variant is a `models.Detector` whose `model` returns the raw head output of the original (the
first element of the YOLO head's inference tuple), so pre-processing, NMS and post-processing are the
same code for all of them and only the model block differs.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from edgecompress import EdgecompressError, first_line
from edgecompress.bench.contention import LoadPolicy
from edgecompress.detection.data import DetectionDataset, outside, subset as draw_subset
from edgecompress.detection.inference import evaluate_detector, image_tensor, letterbox
from edgecompress.detection.gate import Gate, gated
from edgecompress.detection.models import Detector, RawHead
from edgecompress.detection.pruning import MAC_FIELDS, RUNTIME_PAIRS, Built, pruned_variant
from edgecompress.io import read_image
from edgecompress.quantize.config import OnnxInt8Config, OpenVINOConfig
from edgecompress.quantize.fx import quantize_static_fx
from edgecompress.quantize.onnx import OnnxModel, export_onnx, onnx_compute_nodes, quantize_onnx_static
from edgecompress.quantize.openvino import (OpenVINOModel, convert_onnx_to_openvino, openvino_artifact_bytes,
                                            openvino_compute_nodes, output_tail, quantize_openvino)

log = logging.getLogger(__name__)


class HalfHead(RawHead):
    """The raw head of a float16 copy of the model: float32 images in, float32 predictions out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.half()).float()


def calibration_batch(paths: Sequence[Path], imgsz: int) -> torch.Tensor:
    """Letterboxed calibration images (N, 3, imgsz, imgsz), pre-processed as at inference."""
    if not paths:
        raise EdgecompressError("detection.compress.calibration_images: the source data set has no images")
    return torch.stack([letterbox(read_image(p), imgsz)[0] for p in paths])


def calibration_paths(source: DetectionDataset, subset: DetectionDataset, count: int,
                      seed: int) -> tuple[list[Path], bool]:
    """`count` images of the source data set that are not in the evaluation subset (seeded choice).

    Returns:
        (paths, disjoint). When the subset is the whole source, the subset itself calibrates and
        `disjoint` is False (recorded in the metrics and the report: INT8 then saw its test images).
    """
    pool = [image.file_name for image in outside(source, subset).images]
    disjoint = bool(pool)
    if not disjoint:
        log.warning("no source image outside the evaluation subset: INT8 calibrates on the evaluated images")
        pool = [image.file_name for image in source.images]
    chosen = sorted(random.Random(seed + 1).sample(pool, min(count, len(pool))))
    return [Path(source.images_dir) / name for name in chosen], disjoint


def gate_images(train: DetectionDataset, calibration: Sequence[Path], count: int,
                seed: int) -> tuple[DetectionDataset, bool]:
    """`count` training-split images (seeded) for the INT8 quality gate to judge on, none of them a calibration
    image: a gate judged on its own calibration images is flattered (bias correction fits them).

    Returns:
        (images, disjoint). When every training-split image calibrates, the gate judges on them and
        `disjoint` is False (recorded with the gate's result, and logged).
    Raises:
        EdgecompressError: the training split has no image.
    """
    if not train.images:
        raise EdgecompressError("detection.compress.max_map_drop: the quality gate judges on training-split images "
                                "and the training split has none (detection.train_images, detection.subset_images)")
    calibrated = {path.name for path in calibration}
    pool = replace(train, images=[image for image in train.images if image.file_name not in calibrated])
    disjoint = bool(pool.images)
    if not disjoint:
        log.warning("every training-split image calibrates INT8 (detection.compress.calibration_images=%d): the "
                    "quality gate judges on calibration images", len(calibration))
        pool = train
    return draw_subset(pool, min(count, len(pool.images)), seed), disjoint


def onnx_variants(detector: Detector, out_dir: str | Path, calib: torch.Tensor, *, threads: int,
                  int8: bool = True, gate: Gate | None = None, onnx: OnnxInt8Config = OnnxInt8Config()
                  ) -> dict[str, Built]:
    """ONNX FP32 (export of the raw head output, dynamic batch; `calib[:2]` traces it) and, with
    `int8`, ONNX Runtime static INT8 of its convolutions with the `onnx` settings (`detection.compress.onnx`;
    default QDQ, per-channel int8 weights, uint8 activations, MinMax), calibrated on `calib`, through the
    quality `gate` when one is given; its record names the settings ("method", "onnx")."""
    out_dir = Path(out_dir)
    fp32_path, int8_path = out_dir / f"{detector.name}_fp32.onnx", out_dir / f"{detector.name}_int8.onnx"
    export_onnx(RawHead(copy.deepcopy(detector.model).cpu().eval()), calib[:2], fp32_path)
    artifacts = [("onnx_fp32", fp32_path, "ONNX export (CPUExecutionProvider)")]
    out: dict[str, Built] = {}
    for name, path, method in artifacts:
        variant = replace(detector, model=OnnxModel(path, threads=threads), device=torch.device("cpu"))
        out[name] = (variant, {"method": method, "artifact": str(path), "size_mb": round(path.stat().st_size / 1e6, 4)})
    if int8:
        def build(float_layers: tuple[str, ...]) -> Detector:
            # Conv only: the decode tail (sigmoid, grid arithmetic, the concat of pixels and probabilities) stays float
            quantize_onnx_static(fp32_path, int8_path, calib, batch_size=min(8, len(calib)), op_types=["Conv"],
                                 nodes_to_exclude=float_layers, **onnx.ort_options())
            return replace(detector, model=OnnxModel(int8_path, threads=threads), device=torch.device("cpu"))

        variant, record = gated(build, lambda: onnx_compute_nodes(fp32_path), out["onnx_fp32"][0], gate)
        out["onnx_int8"] = (variant, {"method": f"ONNX Runtime static INT8 ({onnx.summary()}; Conv only)",
                                      "onnx": onnx.to_dict(), "op_types": ["Conv"], "artifact": str(int8_path),
                                      "size_mb": round(int8_path.stat().st_size / 1e6, 4),
                                      "calibration_images": len(calib), **record})
    return out


def openvino_variants(detector: Detector, out_dir: str | Path, calib: torch.Tensor, *, threads: int,
                      int8: bool = True, gate: Gate | None = None,
                      openvino: OpenVINOConfig = OpenVINOConfig()) -> dict[str, Built]:
    """OpenVINO FP32 (the ONNX FP32 export converted: OpenVINO's torch tracer rejects YOLOv5's lazily built
    grid) and, with `int8`, NNCF post-training INT8 of it with the `openvino` settings
    (`detection.compress.openvino`), calibrated on `calib` with the decode tail (`quantize.openvino.output_tail`)
    added to the ignored scope."""
    out_dir = Path(out_dir)
    onnx_path = out_dir / f"{detector.name}_fp32.onnx"
    if not onnx_path.is_file():
        export_onnx(RawHead(copy.deepcopy(detector.model).cpu().eval()), calib[:2], onnx_path)
    fp32_path, int8_path = out_dir / f"{detector.name}_openvino_fp32.xml", out_dir / f"{detector.name}_openvino_int8.xml"
    converted = convert_onnx_to_openvino(onnx_path, fp32_path)
    fp32 = replace(detector, model=OpenVINOModel(fp32_path, threads=threads), device=torch.device("cpu"))
    out: dict[str, Built] = {"openvino_fp32": (fp32, {
        "method": "OpenVINO IR of the ONNX export (CPU plugin, f32)", "artifact": str(fp32_path),
        "size_mb": round(openvino_artifact_bytes(fp32_path) / 1e6, 4)})}
    if int8:
        tail = output_tail(converted)

        def build(float_layers: tuple[str, ...]) -> Detector:
            quantize_openvino(converted, calib, int8_path, batch_size=min(8, len(calib)),
                              **openvino.nncf_options([*tail, *float_layers]))
            return replace(detector, model=OpenVINOModel(int8_path, threads=threads), device=torch.device("cpu"))

        variant, record = gated(build, lambda: openvino_compute_nodes(fp32_path), fp32, gate)
        out["openvino_int8"] = (variant, {
            "method": f"NNCF post-training INT8 of the OpenVINO model ({openvino.summary()}; the decode tail's "
                      f"{len(tail)} nodes kept float)", "openvino": openvino.to_dict(), "artifact": str(int8_path),
            "size_mb": round(openvino_artifact_bytes(int8_path) / 1e6, 4), "calibration_images": len(calib), **record})
    return out


def backbone_inputs(detector: Detector, paths: Sequence[Path]) -> list[torch.Tensor]:
    """What a torchvision detector's backbone receives for each image (resized, normalised, padded
    by the model's own transform), captured with a forward pre-hook while the whole model runs."""
    captured: list[torch.Tensor] = []
    handle = detector.model.backbone.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach()))
    try:
        with torch.inference_mode():
            for path in paths:
                detector.model([image_tensor(read_image(path)).to(detector.device)])
    finally:
        handle.remove()
    return [c.cpu() for c in captured]


def _features(out: Any) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else [out]


def feature_sqnr_db(reference: nn.Module, candidate: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Signal-to-quantization-noise ratio (dB) of `candidate`'s feature maps against `reference`'s,
    over all maps of all inputs (higher is closer; ~20-30 dB is typical of good INT8)."""
    signal = noise = 0.0
    with torch.inference_mode():
        for x in inputs:
            for ref, got in zip(_features(reference(x)), _features(candidate(x))):
                signal += float(ref.double().pow(2).sum())
                noise += float((ref.double() - got.double()).pow(2).sum())
    return round(10 * math.log10(signal / noise), 2) if noise > 0 else math.inf


def fx_int8_variant(detector: Detector, paths: Sequence[Path], *, backend: str = "x86") -> Built:
    """FX graph-mode static INT8 (post-training, `quantize.fx.quantize_static_fx`) of a torchvision
    detector's backbone, calibrated on `paths`; the detection heads (anchors, box regression, NMS)
    stay FP32. Recorded with the SQNR of the INT8 backbone's feature maps against FP32 on the
    calibration inputs. A backbone FX cannot trace or quantize is a skip with the error."""
    if not detector.facts.backbone_int8:
        return None, {"skipped": "FX INT8 applies to torchvision backbones; YOLO models are quantized by onnx_int8"}
    if detector.device.type != "cpu":
        return None, {"skipped": "torch.ao INT8 kernels run on the CPU only: set detection.device: cpu"}
    model = copy.deepcopy(detector.model).eval()
    inputs = backbone_inputs(replace(detector, model=model), paths)
    try:
        quantized = quantize_static_fx(model.backbone, inputs, backend=backend)
    except EdgecompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - FX tracing and conversion raise many types
        return None, {"skipped": f"FX could not quantize the {detector.arch} backbone "
                                 f"({type(exc).__name__}: {first_line(exc, 160)})"}
    sqnr = feature_sqnr_db(model.backbone, quantized, inputs)
    model.backbone = quantized
    return replace(detector, model=model), {
        "method": f"FX static INT8 PTQ of the backbone ({backend}, torch.ao); heads FP32",
        "calibration_images": len(inputs), "backbone_sqnr_db": sqnr}


def fp16_variant(detector: Detector) -> Built:
    """Half-precision weights and inputs on CUDA; skipped with the reason on the CPU."""
    if not detector.facts.exportable:
        return None, {"skipped": "the FP16 variant is built for YOLO families (list inputs and dict outputs of "
                                 "torchvision detectors are not wrapped)"}
    if detector.device.type != "cuda":
        return None, {"skipped": "FP16 inference is measured on CUDA only: set detection.device: cuda on a "
                                 "GPU machine"}
    return (replace(detector, model=HalfHead(copy.deepcopy(detector.model)).eval()),
            {"method": "FP16 weights and activations (CUDA)"})


# the pruned network on the runtimes: pruned_onnx_fp32 -> onnx_fp32, ... (eager "pruned" is built by pruning)
PRUNED_RUNTIMES = {pruned: original for original, pruned in RUNTIME_PAIRS if original != "fp32"}


def pruned_runtime_variants(pruned: Built, wanted: Sequence[str], out_dir: str | Path, calib: torch.Tensor, *,
                            threads: int, openvino: OpenVINOConfig = OpenVINOConfig()) -> dict[str, Built]:
    """The `pruned_*` variants of `wanted`: the pruned detector through `onnx_variants` /
    `openvino_variants` (artifacts under `out_dir`, e.g. <models>/pruned/; no quality gate: the pruned
    network is judged by its own accuracy), keys renamed ("pruned_onnx_fp32"...), each record naming
    the pruning and carrying its ratio and MAC counts. Skipped with the pruned variant's reason when
    pruning was."""
    names = [name for name in PRUNED_RUNTIMES if name in wanted]
    detector, record = pruned
    if not names:
        return {}
    if detector is None:
        return {name: (None, {"skipped": record["skipped"]}) for name in names}
    runtimes = {PRUNED_RUNTIMES[name] for name in names}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    built: dict[str, Built] = {}
    if "onnx_fp32" in runtimes:
        built.update(onnx_variants(detector, out_dir, calib, threads=threads, int8=False))
    if {"openvino_fp32", "openvino_int8"} & runtimes:
        built.update(openvino_variants(detector, out_dir, calib, threads=threads, int8="openvino_int8" in runtimes,
                                       openvino=openvino))
    pruning = {key: record[key] for key in ("ratio", "round_to", *MAC_FIELDS)}
    return {f"pruned_{name}": (variant, {**info, "method": f"pruned model, then {info['method']}", **pruning})
            for name, (variant, info) in built.items()}


# ----------------------------------------------------------------------------------------------
# detect_compress: every variant asked for, built and evaluated
def build_variants(detector: Detector, wanted: Sequence[str], *, calibration: Sequence[Path], out_dir: str | Path,
                   threads: int, prune_ratio: float, finetune: Callable[[Detector], dict[str, Any]] | None = None,
                   gate: Gate | None = None, prune_round_to: int | None = None,
                   onnx: OnnxInt8Config = OnnxInt8Config(), openvino: OpenVINOConfig = OpenVINOConfig()
                   ) -> dict[str, Built]:
    """Every variant of `wanted` that applies to the detector's family, built ("fp32": the detector
    itself); the others as skipped with the reason. ONNX artifacts are written under `out_dir` (which
    exists afterwards either way: it is the stage's output), the pruned network's under `out_dir`/pruned.

    Args:
        calibration: images outside the evaluation subset (`calibration_paths`): INT8 calibration,
            ONNX tracing and the pruning graph's trace.
        finetune: the pruned network's fine-tuning (`pruning.pruned_finetune`), None = none.
        gate: the INT8 quality gate of onnx_int8 / openvino_int8 (not of pruned_openvino_int8).
        prune_round_to: Torch-Pruning's round_to (`pruning.pruned_variant`).
        onnx: ONNX Runtime's INT8 settings of onnx_int8 (`detection.compress.onnx`).
        openvino: NNCF's settings of openvino_int8 and pruned_openvino_int8 (`detection.compress.openvino`).
    """
    facts, wanted = detector.facts, set(wanted)
    applies = {"onnx_fp32": facts.exportable, "onnx_int8": facts.exportable, "openvino_fp32": facts.exportable,
               "openvino_int8": facts.exportable, "pruned": facts.prunable,
               **{name: facts.prunable and facts.exportable for name in PRUNED_RUNTIMES}}
    traced = {name for name, ok in applies.items() if ok} & wanted
    calib = calibration_batch(calibration, detector.imgsz) if traced else None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    built: dict[str, Built] = {"fp32": (detector, {"method": "the original model (eager FP32)"})}
    built.update({name: (None, {"skipped": f"{name} is built for YOLO families (a torchvision detector's resize "
                                           "and NMS run inside the model)"})
                  for name, ok in applies.items() if name in wanted and not ok})
    if {"onnx_fp32", "onnx_int8"} & traced:
        built.update(onnx_variants(detector, out_dir, calib, threads=threads, int8="onnx_int8" in wanted, gate=gate,
                                   onnx=onnx))
    if {"openvino_fp32", "openvino_int8"} & traced:
        built.update(openvino_variants(detector, out_dir, calib, threads=threads, int8="openvino_int8" in wanted,
                                       gate=gate, openvino=openvino))
    if {"pruned", *PRUNED_RUNTIMES} & traced:  # the pruned_* runtimes start from the pruned network
        built["pruned"] = pruned_variant(detector, prune_ratio, calib.to(detector.device), finetune=finetune,
                                         round_to=prune_round_to)
        built.update(pruned_runtime_variants(built["pruned"], sorted(traced), Path(out_dir) / "pruned", calib,
                                             threads=threads, openvino=openvino))
    if "fp16" in wanted:
        built["fp16"] = fp16_variant(detector)
    if "fx_int8" in wanted:
        built["fx_int8"] = fx_int8_variant(detector, calibration)
    return built


def evaluate_variants(built: dict[str, Built], names: Sequence[str], ds: DetectionDataset, *, batch_size: int,
                      settings: dict[str, Any], watch: LoadPolicy = LoadPolicy()) -> dict[str, dict[str, Any]]:
    """The metrics row of each variant in `names` (in that order): its record, parameter count and
    `evaluate_detector`'s row at `batch_size` (`settings`: `inference.evaluation_settings`; each timed pass
    watched under `watch`, its "load" in the row); a skipped variant keeps its reason only."""
    variants = {}
    for name in names:
        variant, info = built[name]
        if variant is None:
            variants[name] = info
            log.info("%s skipped: %s", name, info["skipped"])
            continue
        row, _ = evaluate_detector(variant, ds, batch_size=batch_size, **settings, watch=watch, label=name)
        variants[name] = {**info, "params": variant.params() or None, **row}
        log.info("%s: mAP %.3f mAP@.5 %.3f, %.1f ms/image inference (model %.1f ms)", name, row["map"],
                 row["map_50"], row["timing"]["inference_ms_per_image"],
                 row["timing"]["blocks"]["model"]["per_image_ms"])
    return variants
