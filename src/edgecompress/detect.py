"""Object detectors of the detection pipeline: loading (local files only), pre-processing, inference
and NMS, each timed apart with the library's `BlockTimer`.

Families:
- `yolov5`: original YOLOv5 checkpoints (the reference study's models). They are pickled model objects
  from the YOLOv5 code base, which `torch.load(weights_only=True)` refuses. `import_yolov5` is the one
  explicit step that unpickles a checkpoint the user trusts, with the `yolov5` package's classes, and
  writes a plain file: {model config dict, class names, state dict}. `load_detector` rebuilds the
  network from the config and loads the state dict with `weights_only=True`.
- `ultralytics`: any ultralytics weights file (its own loader) or model yaml (random weights).
- `torchvision`: SSD300-VGG16, SSDlite, Faster R-CNN (ResNet-50 FPN / MobileNetV3) builders, with
  weights from a local state-dict file or random. Their resize/normalise and NMS run inside the model,
  so the timer reports them as part of "model".

YOLO families share one letterbox pre-processing (square `imgsz`, grey padding, aspect kept) and one
NMS (`detect_metrics.nms`, torchvision `batched_nms`); boxes are mapped back to original pixels.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from edgecompress import EdgecompressError, first_line
from edgecompress.bench import BlockTimer
from edgecompress.io import load_torch, save_torch

log = logging.getLogger(__name__)

IMPORT_FORMAT = "edgecompress-yolov5-v1"
TORCHVISION_DETECTORS = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet50_fpn",
                         "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")
LETTERBOX_FILL = 114  # YOLO's grey padding value


# ----------------------------------------------------------------------------------------------
# Import of original YOLOv5 checkpoints
def _quiet_yolov5() -> None:
    for name in ("yolov5", "ultralytics"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_yolov5(source: str | Path, out: str | Path) -> dict[str, Any]:
    """Unpickle a trusted original YOLOv5 checkpoint once and write it as a safe-to-load file.

    This is the only place where edgecompress loads a pickle with `weights_only=False`: the file is
    named explicitly by the user (`detection.import.source`), and its sha256 is recorded.

    Returns:
        {"source", "sha256", "out", "classes", "params", "stride"}.
    Raises:
        EdgecompressError: missing file, or a file that is not a YOLOv5 detection checkpoint.
    """
    source = Path(source)
    if not source.is_file():
        raise EdgecompressError(f"detection.import.source={str(source)!r} not found: expected an original YOLOv5 "
                                "checkpoint (e.g. yolov5n.pt from the ultralytics/yolov5 releases) at that path")
    try:
        importlib.import_module("yolov5.models.yolo")  # puts YOLOv5's `models` package on sys.path for the pickle
    except ImportError as exc:
        raise EdgecompressError(f"detect_import needs the `yolov5` package (pip install yolov5; it imports "
                                f"pkg_resources, so setuptools<81): {exc}") from None
    _quiet_yolov5()
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=False)  # trusted by the user: see docstring
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types
        raise EdgecompressError(f"{source}: not a loadable YOLOv5 checkpoint ({first_line(exc, 160)})") from None
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if model is None or not hasattr(model, "yaml") or not hasattr(model, "names"):
        raise EdgecompressError(f"{source}: not a YOLOv5 detection checkpoint (no 'model' with yaml and names)")
    model = model.float()
    names = model.names
    classes = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    payload = {"format": IMPORT_FORMAT, "yaml": copy.deepcopy(model.yaml), "classes": classes,
               "stride": [float(s) for s in model.stride], "state_dict": model.state_dict(),
               "source": {"path": str(source), "sha256": sha256(source)}}
    save_torch(out, payload)
    info = {"source": str(source), "sha256": payload["source"]["sha256"], "out": str(out), "classes": len(classes),
            "params": sum(p.numel() for p in model.parameters()), "stride": payload["stride"]}
    log.info("imported %s -> %s (%d classes, %d parameters)", source, out, info["classes"], info["params"])
    return info


def _build_yolov5(path: str | Path, fuse: bool = True) -> tuple[nn.Module, list[str]]:
    payload = load_torch(path, "imported YOLOv5 model")  # weights_only=True
    if not isinstance(payload, dict) or payload.get("format") != IMPORT_FORMAT:
        raise EdgecompressError(f"{path}: not a file written by detect_import (format {IMPORT_FORMAT}); "
                                "run the detect_import stage on the original checkpoint")
    from yolov5.models.yolo import DetectionModel

    _quiet_yolov5()
    with contextlib.redirect_stdout(io.StringIO()):
        model = DetectionModel(cfg=copy.deepcopy(payload["yaml"]), ch=3, nc=len(payload["classes"]))
    model.load_state_dict(payload["state_dict"], strict=True)
    if fuse:
        model = fuse_yolov5(model)
    return model.eval(), list(payload["classes"])


def fuse_yolov5(model: nn.Module) -> nn.Module:
    """Conv+BN folded, as YOLOv5 runs inference (its own `fuse`, quietly)."""
    # no_grad: fusing a trained model must not tie the fused weights to an autograd graph
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        return model.fuse().eval()


def unfused_yolov5(path: str | Path) -> nn.Module:
    """The imported YOLOv5 network with its BatchNorm layers (for pruning, which must see them)."""
    return _build_yolov5(path, fuse=False)[0]


# ----------------------------------------------------------------------------------------------
# Detector
@dataclass
class Detector:
    """A loaded detector with its class names and the way its raw output becomes boxes."""

    name: str
    family: str
    arch: str
    model: nn.Module
    classes: list[str]
    weights: str  # the file the weights came from, or "random weights"
    imgsz: int
    device: torch.device

    @property
    def random_weights(self) -> bool:
        return self.weights == "random weights"

    @property
    def letterboxed(self) -> bool:
        return self.family != "torchvision"

    @property
    def output_classes(self) -> list[str]:
        """Class name of each index the model outputs: torchvision's COCO detectors predict COCO
        category ids (91 slots, "" where unused), the YOLO families their own class list."""
        return _COCO91 if self.family == "torchvision" else self.classes

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _ultralytics(arch: str | None, weights: str | None, classes: Sequence[str]) -> tuple[nn.Module, list[str], str]:
    with contextlib.redirect_stdout(io.StringIO()):
        if weights:
            from ultralytics import YOLO

            model = YOLO(weights).model.float()
            names = model.names
            return model, [names[i] for i in range(len(names))], weights
        from ultralytics.nn.tasks import DetectionModel

        try:
            model = DetectionModel(cfg=arch, nc=len(classes), verbose=False)
        except FileNotFoundError:
            raise EdgecompressError(f"arch={arch!r}: no such ultralytics model yaml (e.g. yolov8n.yaml, yolo11n.yaml)"
                                    ) from None
    return model, list(classes), "random weights"


def _torchvision(arch: str, weights: str | None, classes: Sequence[str]) -> tuple[nn.Module, list[str], str]:
    import torchvision.models.detection as tvd

    if arch not in TORCHVISION_DETECTORS:
        raise EdgecompressError(f"arch={arch!r} is invalid for family torchvision: {', '.join(TORCHVISION_DETECTORS)}")
    # torchvision's COCO detectors predict COCO category ids (91 slots, 0 = background); random ones
    # are built the same way so category ids map to class names identically.
    model = getattr(tvd, arch)(weights=None, weights_backbone=None, num_classes=91)
    source = "random weights"
    if weights:
        state = load_torch(weights, f"{arch} weights")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EdgecompressError(f"{weights}: does not fit torchvision {arch} with 91 COCO classes "
                                    f"({first_line(exc, 120)})") from None
        source = str(weights)
    return model, list(classes), source


def load_detector(name: str, *, family: str, arch: str | None, weights: str | None, dataset_classes: Sequence[str],
                  imgsz: int = 640, device: str | torch.device = "cpu") -> Detector:
    """Build a detector from local files only (nothing is downloaded).

    Args:
        dataset_classes: class names of the evaluation data; models built with random weights predict
            these, and predictions are mapped to them by name.
    Raises:
        EdgecompressError: a missing weights file, naming where it was expected.
    """
    if weights and not Path(weights).is_file():
        hint = ("run the detect_import stage first (it writes this file from the original checkpoint)"
                if family == "yolov5" else "put the weights file there, or set weights: null for random weights")
        raise EdgecompressError(f"detection.models.{name}.weights={weights!r} not found: {hint}")
    if family == "yolov5":
        model, classes = _build_yolov5(weights)
        source, arch = str(weights), arch or str(Path(weights).stem)
    elif family == "ultralytics":
        model, classes, source = _ultralytics(arch, weights, dataset_classes)
        arch = arch or Path(weights).stem
    elif family == "torchvision":
        model, classes, source = _torchvision(arch, weights, dataset_classes)
    else:
        raise EdgecompressError(f"detection.models.{name}.family={family!r} is invalid: yolov5, ultralytics, torchvision")
    device = torch.device(device)
    return Detector(name=name, family=family, arch=arch, model=model.to(device).eval(), classes=classes,
                    weights=source, imgsz=imgsz, device=device)


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


def read_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, ImportError) as exc:  # ImportError: ultralytics patches Image.open (HEIF)
        raise EdgecompressError(f"{path}: cannot read image ({exc})") from None


# ----------------------------------------------------------------------------------------------
# Inference
def _xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    half = xywh[:, 2:4] / 2
    return torch.cat([xywh[:, :2] - half, xywh[:, :2] + half], dim=1)


def decode_yolo(raw: Any, family: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor]:
    """Per image (boxes xyxy, best-class score, class) before NMS, from a YOLO head's inference output.

    YOLOv5: (B, N, 5 + nc) = xywh, objectness, class probabilities (score = obj * cls).
    ultralytics: (B, 4 + nc, N) = xywh, class probabilities; end-to-end heads (B, max_det, 6) =
    xyxy, score, class already without duplicates (returned as one tensor per image).
    """
    out = raw[0] if isinstance(raw, (tuple, list)) else raw
    if family == "yolov5":
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
    from edgecompress.detect_metrics import nms

    with timer("preprocess"):
        if detector.letterboxed:
            pairs = [letterbox(image, detector.imgsz) for image in images]
            batch = torch.stack([t for t, _ in pairs]).to(detector.device)
            boxes_meta = [m for _, m in pairs]
        else:
            batch = [torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
                     .to(detector.device) for image in images]
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
        decoded = decode_yolo(raw, detector.family)
        kept = []
        for row in decoded:
            if isinstance(row, torch.Tensor):  # end-to-end head: already one box per object
                row = row[row[:, 4] >= conf_threshold][:max_det]
                kept.append({"boxes": row[:, :4], "scores": row[:, 4], "labels": row[:, 5].long()})
            else:
                kept.append(nms(*row, iou_threshold=iou_threshold, conf_threshold=conf_threshold, max_det=max_det))
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


# COCO category id -> name (torchvision detectors' label space; "" for the unused ids)
_COCO91 = ["", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
           "traffic light", "fire hydrant", "", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
           "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "", "backpack", "umbrella", "", "",
           "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
           "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "", "wine glass", "cup", "fork",
           "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
           "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "", "dining table", "", "",
           "toilet", "", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
           "toaster", "sink", "refrigerator", "", "book", "clock", "vase", "scissors", "teddy bear",
           "hair drier", "toothbrush"]


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


def evaluate_detector(detector: Detector, ds: Any, *, batch_size: int, conf_threshold: float,
                      map_conf_threshold: float, iou_threshold: float, max_det: int, warmup_batches: int,
                      agreement_points: float) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """One timed pass of `detector` over the data set `ds` (`detect_data.DetectionDataset`) and every
    metric of it: mAP (torchmetrics, cross-checked with pycocotools), the operating point at
    `conf_threshold`, and the block times.

    One pass at the low `map_conf_threshold` serves both: NMS keeps the same boxes above
    `conf_threshold` whether it ran at that threshold or a lower one (a box is only suppressed by
    higher-scoring ones).

    Returns:
        (row for the metrics JSON, the predictions at `conf_threshold` per image).
    """
    from edgecompress import detect_metrics

    paths = [Path(ds.images_dir) / image.file_name for image in ds.images]
    preds, timing = run_detector(detector, paths, ds.classes, batch_size=batch_size, conf_threshold=map_conf_threshold,
                                 iou_threshold=iou_threshold, max_det=max_det, warmup_batches=warmup_batches)
    evaluation = detect_metrics.evaluate_detections(ds, preds, tolerance_points=agreement_points)
    deployed = [{key: value[pred["scores"] >= conf_threshold] for key, value in pred.items()} for pred in preds]
    operating = detect_metrics.precision_recall_f1(deployed, ds.images)
    row = {"map": evaluation["torchmetrics"]["map"], "map_50": evaluation["torchmetrics"]["map_50"],
           "torchmetrics": evaluation["torchmetrics"], "pycocotools": evaluation["pycocotools"],
           "agreement": evaluation["agreement"], "operating_point": {"conf_threshold": conf_threshold, **operating},
           "pred_boxes_for_map": evaluation["pred_boxes"], "timing": timing}
    return row, deployed


def subset_monitor(params: Any, ds: Any) -> Callable[[Detector], dict[str, Any]]:
    """`evaluate_detector` on `ds` with the `detection` params block's settings, at its largest batch
    size and without warm-up: the per-epoch mAP of fine-tuning (accuracy only; its times are not reported)."""
    settings = {**evaluation_settings(params), "warmup_batches": 0}
    return lambda detector: evaluate_detector(detector, ds, batch_size=max(params.batch_sizes), **settings)[0]


def evaluation_settings(params: Any) -> dict[str, Any]:
    """`evaluate_detector`'s keyword arguments from the `detection` params block."""
    return {"conf_threshold": params.conf_threshold, "map_conf_threshold": params.map_conf_threshold,
            "iou_threshold": params.iou_threshold, "max_det": params.max_det,
            "warmup_batches": params.warmup_batches, "agreement_points": params.map_agreement_points}
