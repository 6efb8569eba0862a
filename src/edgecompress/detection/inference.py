"""Inference of the detection pipeline: pre-processing, the model, decoding, NMS and post-processing,
each timed apart with the library's `BlockTimer`, and the timed evaluation every stage shares
(`evaluate_detector`).

Letterboxing families (`Family.letterboxed`: the YOLO families) share one letterbox pre-processing
(square `imgsz`, grey padding, aspect kept), one head decoder per raw head layout (`Family.head`) and
one NMS (`metrics.nms`, torchvision `batched_nms`); boxes are mapped back to original pixels. The
others (torchvision) resize, normalise and suppress inside the model, so the timer reports that as
part of "model".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from edgecompress.bench.contention import LoadPolicy, watched
from edgecompress.bench.timing import BlockTimer
from edgecompress.detection import metrics
from edgecompress.detection.data import DetectionDataset
from edgecompress.detection.models import Detector
from edgecompress.io import read_image

LETTERBOX_FILL = 114  # YOLO's grey padding value


# ----------------------------------------------------------------------------------------------
# Pre-processing
@dataclass(frozen=True)
class Letterbox:
    """How one image was fitted into the square input: scale, then padding on the left/top."""

    scale: float
    pad_x: float
    pad_y: float
    width: int
    height: int


def letterbox(image: Image.Image, size: int) -> tuple[torch.Tensor, Letterbox]:
    """Resize keeping the aspect ratio so the longer side is `size`, pad to size x size with grey.

    Returns:
        (float tensor (3, size, size) in [0, 1], Letterbox).
    """
    width, height = image.size
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), Image.BILINEAR) if (new_w, new_h) != (width, height) else image
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.uint8)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = np.asarray(resized, dtype=np.uint8)
    tensor = torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255.0)
    return tensor, Letterbox(scale, float(pad_x), float(pad_y), width, height)


def unletterbox(boxes: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """Boxes (N, 4) xyxy in letterboxed pixels -> original image pixels, clipped to the image."""
    out = boxes.clone()
    out[:, [0, 2]] = ((out[:, [0, 2]] - box.pad_x) / box.scale).clamp_(0, box.width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - box.pad_y) / box.scale).clamp_(0, box.height)
    return out


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A decoded image as a float tensor (3, H, W) in [0, 1], unresized (what torchvision detectors take)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


# ----------------------------------------------------------------------------------------------
# Inference
def _xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    half = xywh[:, 2:4] / 2
    return torch.cat([xywh[:, :2] - half, xywh[:, :2] + half], dim=1)


def decode_yolo(raw: Any, head: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor]:
    """Per image (boxes xyxy, best-class score, class) before NMS, from a YOLO head's inference output
    in layout `head` (`Family.head`).

    yolov5: (B, N, 5 + nc) = xywh, objectness, class probabilities (score = obj * cls).
    ultralytics: (B, 4 + nc, N) = xywh, class probabilities; end-to-end heads (B, max_det, 6) =
    xyxy, score, class already without duplicates (returned as one tensor per image).
    """
    out = raw[0] if isinstance(raw, (tuple, list)) else raw
    if head == "yolov5":
        rows = []
        for pred in out:
            scores, labels = (pred[:, 5:] * pred[:, 4:5]).max(1)
            rows.append((_xywh_to_xyxy(pred[:, :4]), scores, labels))
        return rows
    if out.ndim == 3 and out.shape[-1] == 6 and out.shape[1] != 6:  # end-to-end (NMS-free) head
        return list(out)
    rows = []
    for pred in out.transpose(1, 2):
        scores, labels = pred[:, 4:].max(1)
        rows.append((_xywh_to_xyxy(pred[:, :4]), scores, labels))
    return rows


def model_to_dataset_classes(model_classes: Sequence[str], dataset_classes: Sequence[str]) -> torch.Tensor:
    """Model class index -> data set class index by name; -1 where the data set lacks the class."""
    index = {name: i for i, name in enumerate(dataset_classes)}
    return torch.tensor([index.get(name, -1) for name in model_classes], dtype=torch.long)


def predict_batch(detector: Detector, images: Sequence[Image.Image], *, timer: BlockTimer, conf_threshold: float,
                  iou_threshold: float, max_det: int, class_map: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Detections for a batch of decoded images, in original pixels and data set class indices.

    `class_map`: `model_to_dataset_classes(detector.output_classes, dataset classes)`; detections of
    classes the data set lacks are dropped.

    Timed blocks: "preprocess" (letterbox / to-tensor, host to device), "model" (forward), "nms" (YOLO
    families; torchvision detectors run it inside "model"), "postprocess" (boxes back to the image,
    class mapping, to CPU).
    """
    with timer("preprocess"):
        if detector.letterboxed:
            pairs = [letterbox(image, detector.imgsz) for image in images]
            batch = torch.stack([t for t, _ in pairs]).to(detector.device)
            boxes_meta = [m for _, m in pairs]
        else:
            batch = [image_tensor(image).to(detector.device) for image in images]
    if not detector.letterboxed:
        _configure_torchvision(detector.model, conf_threshold, iou_threshold, max_det)
    with timer("model"), torch.inference_mode():
        raw = detector.model(batch)
    results = []
    if not detector.letterboxed:
        with timer("postprocess"):
            mapping = class_map.to(detector.device)
            for out in raw:  # labels are COCO category ids: 1..90
                labels = mapping[out["labels"]]
                keep = labels >= 0
                results.append({"boxes": out["boxes"][keep].float().cpu(), "scores": out["scores"][keep].float().cpu(),
                                "labels": labels[keep].cpu()})
        return results
    with timer("nms"):
        decoded = decode_yolo(raw, detector.facts.head)
        kept = []
        for row in decoded:
            if isinstance(row, torch.Tensor):  # end-to-end head: already one box per object
                row = row[row[:, 4] >= conf_threshold][:max_det]
                kept.append({"boxes": row[:, :4], "scores": row[:, 4], "labels": row[:, 5].long()})
            else:
                kept.append(metrics.nms(*row, iou_threshold=iou_threshold, conf_threshold=conf_threshold,
                                        max_det=max_det))
    with timer("postprocess"):
        mapping = class_map.to(detector.device)
        for det, meta in zip(kept, boxes_meta):
            labels = mapping[det["labels"]]
            keep = labels >= 0
            results.append({"boxes": unletterbox(det["boxes"][keep].float(), meta).cpu(),
                            "scores": det["scores"][keep].float().cpu(), "labels": labels[keep].cpu()})
    return results


def _configure_torchvision(model: nn.Module, conf: float, iou: float, max_det: int) -> None:
    """torchvision detectors filter and suppress inside forward: give them the pipeline's thresholds."""
    head = getattr(model, "roi_heads", None) or model
    for attr, value in (("score_thresh", conf), ("nms_thresh", iou), ("detections_per_img", max_det)):
        if hasattr(head, attr):
            setattr(head, attr, value)


def run_detector(detector: Detector, image_paths: Sequence[Path], dataset_classes: Sequence[str], *,
                 batch_size: int, conf_threshold: float, iou_threshold: float, max_det: int,
                 warmup_batches: int = 1, progress: Callable[[int], None] | None = None,
                 ) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """Run a detector over images in batches of `batch_size` (the last batch may be smaller).

    Image decoding is timed as "decode" apart from pre-processing. `warmup_batches` untimed batches
    run first (allocator, oneDNN primitives). Returns (predictions per image, timing) where timing
    holds per block total / per-image ms, the total, images/s and peak memory.
    """
    class_map = model_to_dataset_classes(detector.output_classes, dataset_classes)
    if warmup_batches:
        first = [read_image(p) for p in image_paths[:batch_size]]
        for _ in range(warmup_batches):
            predict_batch(detector, first, timer=BlockTimer(detector.device), conf_threshold=conf_threshold,
                          iou_threshold=iou_threshold, max_det=max_det, class_map=class_map)
    timer = BlockTimer(detector.device)
    preds: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(image_paths), batch_size):
        chunk = image_paths[start:start + batch_size]
        with timer("decode"):
            images = [read_image(p) for p in chunk]
        preds += predict_batch(detector, images, timer=timer, conf_threshold=conf_threshold,
                               iou_threshold=iou_threshold, max_det=max_det, class_map=class_map)
        if progress:
            progress(len(chunk))
    summary = timer.summary()
    count = len(image_paths)
    blocks = {name: {"total_ms": round(s["total_ms"], 3), "per_image_ms": round(s["total_ms"] / count, 3),
                     "calls": s["count"]}
              for name, s in summary.items() if not name.startswith("_")}
    inference_ms = sum(blocks[b]["total_ms"] for b in ("preprocess", "model", "nms", "postprocess") if b in blocks)
    total_ms = inference_ms + blocks.get("decode", {}).get("total_ms", 0.0)
    timing = {"batch_size": batch_size, "images": count, "batches": math.ceil(count / batch_size), "blocks": blocks,
              "inference_ms_per_image": round(inference_ms / count, 3),
              "total_ms_per_image": round(total_ms / count, 3), "total_s": round(total_ms / 1e3, 3),
              "images_per_s": round(count / (total_ms / 1e3), 3) if total_ms else None,
              "peak_memory_mb": round(summary["_peak_memory_mb"], 1)}
    return preds, timing


def evaluate_detector(detector: Detector, ds: DetectionDataset, *, batch_size: int, conf_threshold: float,
                      map_conf_threshold: float, iou_threshold: float, max_det: int, warmup_batches: int,
                      agreement_points: float, watch: LoadPolicy = LoadPolicy(), label: str = "detector",
                      ) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """One timed pass of `detector` over the data set `ds` and every
    metric of it: mAP (torchmetrics, cross-checked with pycocotools), the operating point at
    `conf_threshold`, and the block times.

    The pass is watched under `watch` (`bench.contention.watched`, named `label` in its warning): run while
    other processes took the CPU, it runs again (same predictions, new times) and the row records its
    "load"; the default watches nothing (monitoring passes whose times are not reported).

    One pass at the low `map_conf_threshold` serves both: NMS keeps the same boxes above
    `conf_threshold` whether it ran at that threshold or a lower one (a box is only suppressed by
    higher-scoring ones).

    Returns:
        (row for the metrics JSON, the predictions at `conf_threshold` per image).
    """
    paths = [Path(ds.images_dir) / image.file_name for image in ds.images]
    (preds, timing), load = watched(partial(run_detector, detector, paths, ds.classes, batch_size=batch_size,
                                            conf_threshold=map_conf_threshold, iou_threshold=iou_threshold,
                                            max_det=max_det, warmup_batches=warmup_batches), watch, label)
    evaluation = metrics.evaluate_detections(ds, preds, tolerance_points=agreement_points)
    deployed = [{key: value[pred["scores"] >= conf_threshold] for key, value in pred.items()} for pred in preds]
    operating = metrics.precision_recall_f1(deployed, ds.images)
    row = {"map": evaluation["torchmetrics"]["map"], "map_50": evaluation["torchmetrics"]["map_50"],
           "torchmetrics": evaluation["torchmetrics"], "pycocotools": evaluation["pycocotools"],
           "agreement": evaluation["agreement"], "operating_point": {"conf_threshold": conf_threshold, **operating},
           "pred_boxes_for_map": evaluation["pred_boxes"], "timing": timing, **({"load": load} if load else {})}
    return row, deployed


def subset_monitor(params: Any, ds: DetectionDataset) -> Callable[[Detector], dict[str, Any]]:
    """`evaluate_detector` on `ds` with the `detection` params block's settings, at its largest batch
    size and without warm-up: the per-epoch mAP of fine-tuning (accuracy only; its times are not reported)."""
    settings = {**evaluation_settings(params), "warmup_batches": 0}
    return lambda detector: evaluate_detector(detector, ds, batch_size=max(params.batch_sizes), **settings)[0]


def evaluation_settings(params: Any) -> dict[str, Any]:
    """`evaluate_detector`'s keyword arguments from the `detection` params block."""
    return {"conf_threshold": params.conf_threshold, "map_conf_threshold": params.map_conf_threshold,
            "iou_threshold": params.iou_threshold, "max_det": params.max_det,
            "warmup_batches": params.warmup_batches, "agreement_points": params.map_agreement_points}
