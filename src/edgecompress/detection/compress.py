"""Compressed variants of a detector, each evaluated exactly like the original (`detect_eval`'s
`inference.evaluate_detector`). Exportable families (the YOLO ones): ONNX Runtime FP32 and static
INT8 (QDQ, calibrated on images the evaluation never sees) and FP16 on CUDA; prunable ones: structured
pruning of the backbone with Torch-Pruning (the detection head's output convolutions are kept, so
boxes and classes keep their layout; optionally fine-tuned); torchvision detectors: FX static INT8 of
the backbone (the heads stay FP32). Which apply is read from the family's entry
(`families.Family`); a variant that does not apply is recorded as skipped with the reason.

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
from edgecompress.detection.data import DetectionDataset, outside
from edgecompress.detection.inference import evaluate_detector, image_tensor, letterbox
from edgecompress.detection.models import Detector, fuse_network, unfused_network
from edgecompress.detection.source import load_subset
from edgecompress.detection.train import fit_detector
from edgecompress.io import read_image
from edgecompress.prune import PruneConfig, prune_model
from edgecompress.quantize.fx import quantize_static_fx
from edgecompress.detection.gate import Gate, gated
from edgecompress.quantize.onnx import OnnxModel, export_onnx, onnx_compute_nodes, quantize_onnx_static
from edgecompress.quantize.openvino import (OpenVINOModel, convert_onnx_to_openvino, openvino_artifact_bytes,
                                            openvino_compute_nodes, output_tail, quantize_openvino)

log = logging.getLogger(__name__)

Built = tuple[Detector | None, dict[str, Any]]  # a variant and its record (None and {"skipped": why})


class RawHead(nn.Module):
    """The detector's raw head tensor only (YOLO heads return (predictions, features) in eval mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


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


def onnx_variants(detector: Detector, out_dir: str | Path, calib: torch.Tensor, *, threads: int,
                  int8: bool = True, gate: Gate | None = None) -> dict[str, Built]:
    """ONNX FP32 (export of the raw head output, dynamic batch; `calib[:2]` traces it) and, with
    `int8`, ONNX Runtime static INT8 (QDQ, per-channel int8 weights, uint8 activations, MinMax
    calibration on `calib`), through the quality `gate` when one is given."""
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
            quantize_onnx_static(fp32_path, int8_path, calib, per_channel=True, batch_size=min(8, len(calib)),
                                 op_types=["Conv"], nodes_to_exclude=float_layers)
            return replace(detector, model=OnnxModel(int8_path, threads=threads), device=torch.device("cpu"))

        variant, record = gated(build, lambda: onnx_compute_nodes(fp32_path), out["onnx_fp32"][0], gate)
        out["onnx_int8"] = (variant, {"method": "ONNX Runtime static INT8 (QDQ, per-channel, MinMax; Conv only)",
                                      "artifact": str(int8_path), "size_mb": round(int8_path.stat().st_size / 1e6, 4),
                                      "calibration_images": len(calib), **record})
    return out


def openvino_variants(detector: Detector, out_dir: str | Path, calib: torch.Tensor, *, threads: int,
                      int8: bool = True, gate: Gate | None = None) -> dict[str, Built]:
    """OpenVINO FP32 (the ONNX FP32 export converted: OpenVINO's torch tracer rejects YOLOv5's lazily built
    grid) and, with `int8`, NNCF post-training INT8 of it, calibrated on `calib` with the decode tail
    (`quantize.openvino.output_tail`) kept float."""
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
                              ignored_scope={"names": [*tail, *float_layers]})
            return replace(detector, model=OpenVINOModel(int8_path, threads=threads), device=torch.device("cpu"))

        variant, record = gated(build, lambda: openvino_compute_nodes(fp32_path), fp32, gate)
        out["openvino_int8"] = (variant, {
            "method": f"NNCF post-training INT8 of the OpenVINO model (performance preset; the decode tail's "
                      f"{len(tail)} nodes kept float)", "artifact": str(int8_path),
            "size_mb": round(openvino_artifact_bytes(int8_path) / 1e6, 4), "calibration_images": len(calib), **record})
    return out


def head_output_convs(model: nn.Module) -> list[nn.Module]:
    """The convolutions whose outputs are the detection head's predictions (kept whole by pruning)."""
    head = list(model.modules())
    detect_heads = [m for m in head if type(m).__name__ in ("Detect", "Segment", "Pose", "OBB", "v10Detect")]
    if not detect_heads:
        raise EdgecompressError("pruning: no YOLO Detect head found in the model (only YOLO families are pruned)")
    return [m for h in detect_heads for m in h.modules() if isinstance(m, nn.Conv2d)]


def _conv_slice(conv_block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an ultralytics Conv (conv + BatchNorm + activation) keeping output channels start:stop."""
    part = copy.deepcopy(conv_block)
    conv, norm = part.conv, part.bn
    conv.weight = nn.Parameter(conv.weight.detach()[start:stop].clone())
    conv.out_channels = stop - start
    norm.weight = nn.Parameter(norm.weight.detach()[start:stop].clone())
    norm.bias = nn.Parameter(norm.bias.detach()[start:stop].clone())
    norm.running_mean = norm.running_mean[start:stop].clone()
    norm.running_var = norm.running_var[start:stop].clone()
    norm.num_features = stop - start
    return part


class SplitFreeC2f(nn.Module):
    """ultralytics' C2f (and C3k2) block with its first 1x1 convolution cut in two (`cv0`, `cv1`) instead
    of one convolution whose output is `chunk`ed: the same function and weights, in a form Torch-Pruning
    can prune (its dependency graph does not follow channels through a chunk of a pruned layer)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.c = block.c
        self.cv0, self.cv1 = _conv_slice(block.cv1, 0, block.c), _conv_slice(block.cv1, block.c, 2 * block.c)
        self.cv2, self.m = block.cv2, block.m
        for attr in ("f", "i", "type", "np"):  # what ultralytics' model loop reads of each layer
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def split_free_c2f(model: nn.Module) -> int:
    """Replace every C2f / C3k2 block of an ultralytics model by `SplitFreeC2f`, in place; returns how many."""
    try:
        from ultralytics.nn.modules.block import C2f
    except ImportError:
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f) and hasattr(child.cv1, "bn"):
                setattr(parent, name, SplitFreeC2f(child))
                count += 1
    return count


# ultralytics attention blocks (yolo11's C2PSA, yolo12's A2C2f): building Torch-Pruning's dependency
# graph of yolo11n exhausted an 8 GB memory limit after 80 s, so they are refused up front
UNPRUNABLE_BLOCKS = ("C2PSA", "PSA", "A2C2f", "AAttn", "Attention")


def pruned_variant(detector: Detector, ratio: float, example: torch.Tensor,
                   finetune: Callable[[Detector], dict[str, Any]] | None = None) -> Built:
    """Backbone/neck channels removed with Torch-Pruning (L1 magnitude, per layer); every convolution
    of the detection head is ignored, so its outputs keep their layout.

    `finetune(pruned detector)` (e.g. `pruned_finetune`'s fit on the training split) runs on the
    pruned network while it still has its BatchNorm layers; what it returns is recorded under
    "finetune". Without it the accuracy pruning alone costs is the number reported.

    ultralytics C2f / C3k2 blocks are first rewritten split-free (`SplitFreeC2f`, same function). An
    architecture Torch-Pruning cannot handle (attention blocks, `UNPRUNABLE_BLOCKS`, refused up front;
    any other failure of its graph) is returned as skipped with the reason.
    """
    blocks = sorted({type(m).__name__ for m in detector.model.modules()} & set(UNPRUNABLE_BLOCKS))
    if blocks:
        return None, {"skipped": f"Torch-Pruning is not run on {detector.arch}: its attention blocks "
                                 f"({', '.join(blocks)}) are not supported (the dependency graph of yolo11n "
                                 "exhausted 8 GB of memory)"}
    # Fused families (YOLOv5) are pruned unfused so the BatchNorm layers go with their channels
    # (measured on yolov5n: 5% of channels cost 0.72 -> 0.11 mAP@.5 unfused, -> 0.0002 fused)
    fused = detector.facts.fused
    model = unfused_network(detector)
    rewritten = 0 if fused else split_free_c2f(model)
    try:
        report = prune_model(RawHead(model), example[:1].cpu(), PruneConfig(ratio=ratio, importance="l1"),
                             ignored_layers=head_output_convs(model))
    except EdgecompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch-pruning raises many types on unsupported graphs
        return None, {"skipped": f"Torch-Pruning could not prune {detector.arch} "
                                 f"({type(exc).__name__}: {first_line(exc, 160)})"}
    variant = replace(detector, model=model.to(detector.device).eval())
    tuned = finetune(variant) if finetune is not None else None
    if fused:
        variant = replace(variant, model=fuse_network(variant.model))
    how = f"fine-tuned {tuned['epochs']} epochs on {tuned['images']} images" if tuned else "no fine-tuning"
    how += f"; {rewritten} C2f blocks made split-free first" if rewritten else ""
    return variant, {"method": f"Torch-Pruning L1, ratio {ratio} per layer, head kept, {how}",
                     **{k: report[k] for k in ("params_before", "params_after", "macs_before", "macs_after",
                                               "mac_ratio_removed", "param_ratio_removed")},
                     "finetune": tuned}


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


# ----------------------------------------------------------------------------------------------
# detect_compress: every variant asked for, built and evaluated
def pruned_finetune(train_dir: str | Path, *, epochs: int, settings: dict[str, Any], seed: int,
                    evaluate: Callable[[Detector], dict[str, Any]]) -> Callable[[Detector], dict[str, Any]] | None:
    """The pruned network's fine-tuning for `pruned_variant`: `epochs` with detection.train's optimizer
    settings (`settings`, `train.loop_settings`) on the training split in `train_dir`, its subset mAP
    (`evaluate`) recorded before and after each epoch; None for 0 epochs or an empty split."""
    if epochs == 0:
        return None
    train = load_subset(train_dir)
    if not train.images:
        log.warning("pruned variant not fine-tuned: the training split is empty (every source image is evaluated)")
        return None
    # BatchNorm statistics are re-estimated: pruning changed every activation they describe
    hyper = {**settings, "epochs": epochs, "freeze_batchnorm": False}

    def finetune(pruned: Detector) -> dict[str, Any]:
        before = evaluate(pruned)  # what pruning alone left
        result = fit_detector(pruned, train, seed=seed, desc="pruned", evaluate=evaluate, **hyper)
        return {**result, "before": {"map": before["map"], "map_50": before["map_50"]}}
    return finetune


def build_variants(detector: Detector, wanted: Sequence[str], *, calibration: Sequence[Path], out_dir: str | Path,
                   threads: int, prune_ratio: float, finetune: Callable[[Detector], dict[str, Any]] | None = None,
                   gate: Gate | None = None) -> dict[str, Built]:
    """Every variant of `wanted` that applies to the detector's family, built ("fp32": the detector
    itself); the others as skipped with the reason. ONNX artifacts are written under `out_dir` (which
    exists afterwards either way: it is the stage's output).

    Args:
        calibration: images outside the evaluation subset (`calibration_paths`): INT8 calibration,
            ONNX tracing and the pruning graph's trace.
    """
    facts, wanted = detector.facts, set(wanted)
    applies = {"onnx_fp32": facts.exportable, "onnx_int8": facts.exportable, "openvino_fp32": facts.exportable,
               "openvino_int8": facts.exportable, "pruned": facts.prunable}
    traced = {name for name, ok in applies.items() if ok} & wanted
    calib = calibration_batch(calibration, detector.imgsz) if traced else None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    built: dict[str, Built] = {"fp32": (detector, {"method": "the original model (eager FP32)"})}
    built.update({name: (None, {"skipped": f"{name} is built for YOLO families (a torchvision detector's resize "
                                           "and NMS run inside the model)"})
                  for name, ok in applies.items() if name in wanted and not ok})
    if {"onnx_fp32", "onnx_int8"} & traced:
        built.update(onnx_variants(detector, out_dir, calib, threads=threads, int8="onnx_int8" in wanted, gate=gate))
    if {"openvino_fp32", "openvino_int8"} & traced:
        built.update(openvino_variants(detector, out_dir, calib, threads=threads, int8="openvino_int8" in wanted,
                                       gate=gate))
    if "pruned" in traced:
        built["pruned"] = pruned_variant(detector, prune_ratio, calib.to(detector.device), finetune=finetune)
    if "fp16" in wanted:
        built["fp16"] = fp16_variant(detector)
    if "fx_int8" in wanted:
        built["fx_int8"] = fx_int8_variant(detector, calibration)
    return built


def evaluate_variants(built: dict[str, Built], names: Sequence[str], ds: DetectionDataset, *, batch_size: int,
                      settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metrics row of each variant in `names` (in that order): its record, parameter count and
    `evaluate_detector`'s row at `batch_size` (`settings`: `inference.evaluation_settings`); a skipped
    variant keeps its reason only."""
    variants = {}
    for name in names:
        variant, info = built[name]
        if variant is None:
            variants[name] = info
            log.info("%s skipped: %s", name, info["skipped"])
            continue
        row, _ = evaluate_detector(variant, ds, batch_size=batch_size, **settings)
        variants[name] = {**info, "params": variant.params() or None, **row}
        log.info("%s: mAP %.3f mAP@.5 %.3f, %.1f ms/image inference (model %.1f ms)", name, row["map"],
                 row["map_50"], row["timing"]["inference_ms_per_image"],
                 row["timing"]["blocks"]["model"]["per_image_ms"])
    return variants
