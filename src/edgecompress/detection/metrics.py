"""Object-detection evaluation and post-processing: NMS, COCO mAP (torchmetrics, cross-checked with
pycocotools) and precision/recall/F1 at a fixed operating point.

Conventions (shared with `detection.data`):
- boxes are xyxy in absolute pixels; labels are contiguous class indices into `DetectionDataset.classes`;
- predictions are, per image and in the order of `DetectionDataset.images`, torchmetrics' dict
  `{"boxes": (M, 4) float, "scores": (M,) float, "labels": (M,) long}`;
- metric values are plain floats in [0, 1]; a value COCO cannot define (no ground truth in that class or
  size range, reported as -1 by COCO) is None.

mAP is computed twice on purpose: torchmetrics (faster-coco-eval backend, else pycocotools) is the number
the pipeline reports, and pycocotools' reference `COCOeval` run directly on a ground truth built here is an
independent check that boxes, labels and category ids went through the conversions unchanged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torchvision

from edgecompress import EdgecompressError
from edgecompress.config import check
from edgecompress.detection.data import DetectionDataset, ImageAnnotation

AGREEMENT_KEYS = ("map", "map_50", "map_75", "mar_100")
TORCHMETRICS_KEYS = ("map", "map_50", "map_75", "mar_100", "map_small", "map_medium", "map_large")

logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs every COCO summary line at INFO

Prediction = Mapping[str, torch.Tensor]
Target = ImageAnnotation | Mapping[str, Any]


# ----------------------------------------------------------------------------------------------
# Post-processing
def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, iou_threshold: float,
        conf_threshold: float, max_det: int) -> dict[str, torch.Tensor]:
    """Class-aware non-maximum suppression of one image's raw detections.

    Drops detections scoring below `conf_threshold`, suppresses a box overlapping a higher-scoring box
    of the same class with IoU > `iou_threshold` (boxes of different classes never suppress each other)
    and keeps the `max_det` highest scores.

    Returns:
        The prediction dict {"boxes": float (K, 4), "scores": float (K,), "labels": long (K,)},
        sorted by descending score.
    Raises:
        EdgecompressError: a threshold outside [0, 1] or `max_det` not a positive integer.
    """
    for name, value in (("iou_threshold", iou_threshold), ("conf_threshold", conf_threshold)):
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
              f"nms {name}", value, "must be a number in [0, 1]")
    check(isinstance(max_det, int) and not isinstance(max_det, bool) and max_det >= 1, "nms max_det", max_det,
          "must be an integer >= 1")
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    confident = scores >= conf_threshold
    boxes, scores, labels = boxes[confident], scores[confident], labels[confident]
    keep = torchvision.ops.batched_nms(boxes, scores, labels, iou_threshold)[:max_det]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# ----------------------------------------------------------------------------------------------
# Input normalisation
def _numpy(values: Any, dtype: Any) -> np.ndarray:
    """Tensor/array/list -> numpy array of `dtype` (on the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def target_arrays(target: Target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (N, 4) float64, labels (N,) int64, iscrowd (N,) bool) of an ImageAnnotation or a
    torchmetrics-style target dict ("iscrowd" optional)."""
    if isinstance(target, ImageAnnotation):
        boxes, labels, crowd = target.boxes, target.labels, target.iscrowd
    else:
        boxes, labels = target["boxes"], target["labels"]
        crowd = target.get("iscrowd", np.zeros(len(labels), dtype=bool))
    return (_numpy(boxes, np.float64).reshape(-1, 4), _numpy(labels, np.int64).reshape(-1),
            _numpy(crowd, bool).reshape(-1))


def prediction_arrays(pred: Prediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (M, 4) float64, scores (M,) float64, labels (M,) int64) of a prediction dict."""
    return (_numpy(pred["boxes"], np.float64).reshape(-1, 4), _numpy(pred["scores"], np.float64).reshape(-1),
            _numpy(pred["labels"], np.int64).reshape(-1))


def check_lengths(preds: Sequence[Prediction], targets: Sequence[Any]) -> None:
    if len(preds) != len(targets):
        raise EdgecompressError(
            f"detection predictions cover {len(preds)} images but the data set has {len(targets)}: "
            "expected one prediction dict per image, in data set order")


def _metric_value(value: float) -> float | None:
    """COCO's -1 ("undefined: no ground truth") -> None, anything else a plain float."""
    value = float(value)
    return None if value < 0 else value


# ----------------------------------------------------------------------------------------------
# mAP
def map_backend() -> str:
    """The COCO implementation torchmetrics should use: "faster_coco_eval" (same algorithm, faster),
    else "pycocotools".

    Raises:
        EdgecompressError: when neither is installed.
    """
    # torchmetrics only finds a missing backend at compute time, so look before choosing.
    for backend in ("faster_coco_eval", "pycocotools"):
        if importlib.util.find_spec(backend) is not None:
            return backend
    raise EdgecompressError("detection mAP needs faster-coco-eval or pycocotools: neither is installed "
                            "(pip install faster-coco-eval pycocotools)")


def map_torchmetrics(preds: Sequence[Prediction], targets: Sequence[Target], *,
                     per_class: bool = True) -> dict[str, Any]:
    """COCO mAP with `torchmetrics.detection.MeanAveragePrecision` (xyxy boxes, bbox IoU).

    Uses the faster-coco-eval backend, or pycocotools when faster-coco-eval is not installed.

    Args:
        preds: one prediction dict per image.
        targets: per image an `ImageAnnotation`, or a torchmetrics target dict
            {"boxes", "labels", optional "iscrowd"}.
        per_class: also compute AP@[.5:.95] per class (torchmetrics re-runs the evaluation one class at
            a time, which roughly doubles the cost).
    Returns:
        {"backend", "map", "map_50", "map_75", "mar_100", "map_small", "map_medium", "map_large",
        "map_per_class": {class index: AP or None}} (map_per_class only with `per_class`); undefined
        values (no ground truth) are None.
    """
    from torchmetrics.detection import MeanAveragePrecision

    check_lengths(preds, targets)
    backend = map_backend()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=per_class, backend=backend)
    tm_preds, tm_targets = [], []
    for pred, target in zip(preds, targets):
        boxes, scores, labels = prediction_arrays(pred)
        tm_preds.append({"boxes": torch.from_numpy(boxes).float(), "scores": torch.from_numpy(scores).float(),
                         "labels": torch.from_numpy(labels)})
        gt_boxes, gt_labels, crowd = target_arrays(target)
        tm_targets.append({"boxes": torch.from_numpy(gt_boxes).float(), "labels": torch.from_numpy(gt_labels),
                           "iscrowd": torch.from_numpy(crowd.astype(np.int64))})
    metric.update(tm_preds, tm_targets)
    with contextlib.redirect_stdout(io.StringIO()):
        computed = metric.compute()
    result: dict[str, Any] = {"backend": backend}
    result.update({key: _metric_value(computed[key]) for key in TORCHMETRICS_KEYS})
    if per_class:
        classes = computed["classes"].reshape(-1).tolist()
        values = computed["map_per_class"].reshape(-1).tolist()
        result["map_per_class"] = {int(c): _metric_value(v) for c, v in zip(classes, values)}
    return result


def _coco_ground_truth(ds: DetectionDataset) -> dict[str, Any]:
    """The data set as a COCO instances dict (annotation ids start at 1: COCOeval reads id 0 as
    'unmatched')."""
    images, annotations = [], []
    for image in ds.images:
        images.append({"id": int(image.image_id), "file_name": image.file_name, "width": int(image.width),
                       "height": int(image.height)})
        boxes, labels, crowd = target_arrays(image)
        for (x1, y1, x2, y2), label, is_crowd in zip(boxes.tolist(), labels.tolist(), crowd.tolist()):
            width, height = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": int(image.image_id),
                                "category_id": _category_id(ds, label), "bbox": [x1, y1, width, height],
                                "area": width * height, "iscrowd": int(is_crowd)})
    categories = [{"id": int(cid), "name": name} for cid, name in zip(ds.category_ids, ds.classes)]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def _category_id(ds: DetectionDataset, label: int) -> int:
    if not 0 <= label < len(ds.category_ids):
        raise EdgecompressError(
            f"detection label {label}: expected a class index in [0, {len(ds.category_ids) - 1}] "
            f"({len(ds.classes)} classes)")
    return int(ds.category_ids[label])


def coco_eval(ds: DetectionDataset, preds: Sequence[Prediction]) -> dict[str, float | None]:
    """COCO mAP with pycocotools' reference `COCOeval`, independently of torchmetrics.

    The ground truth is built in memory from `ds` (category ids from `ds.category_ids`, area = box
    area, iscrowd kept), the results list from `preds` (xywh boxes).

    Returns:
        {"map", "map_50", "map_75", "mar_100"} (COCOeval's stats[0], [1], [2], [8]); undefined values
        are None. With no predictions at all every value is 0.0 (COCO's `loadRes` rejects an empty
        results list; with nothing detected, precision and recall are 0 wherever they are defined).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    check_lengths(preds, ds.images)
    results = []
    for image, pred in zip(ds.images, preds):
        boxes, scores, labels = prediction_arrays(pred)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": int(image.image_id), "category_id": _category_id(ds, label),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    if not results:
        return {key: 0.0 for key in AGREEMENT_KEYS}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = _coco_ground_truth(ds)
        ground_truth.createIndex()
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"map": _metric_value(stats[0]), "map_50": _metric_value(stats[1]),
            "map_75": _metric_value(stats[2]), "mar_100": _metric_value(stats[8])}


def agreement(tm: Mapping[str, Any], coco: Mapping[str, Any], tolerance_points: float = 0.5) -> dict[str, Any]:
    """How far torchmetrics' and pycocotools' numbers are apart, in percentage points.

    Returns:
        {"difference_points": {key: |tm - coco| * 100, or None when only one side is defined},
        "tolerance_points", "agree": every difference <= tolerance}. Keys: map, map_50, map_75, mar_100
        (those present in both); both sides None counts as a difference of 0.
    """
    differences: dict[str, float | None] = {}
    for key in AGREEMENT_KEYS:
        if key not in tm or key not in coco:
            continue
        left, right = tm[key], coco[key]
        if left is None and right is None:
            differences[key] = 0.0
        elif left is None or right is None:
            differences[key] = None
        else:
            differences[key] = round(abs(float(left) - float(right)) * 100, 4)
    agree = all(value is not None and value <= tolerance_points for value in differences.values())
    return {"difference_points": differences, "tolerance_points": float(tolerance_points), "agree": agree}


# ----------------------------------------------------------------------------------------------
# Operating point
def _pairwise_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(len(boxes), len(others)) intersection over union of xyxy boxes."""
    intersection = _pairwise_intersection(boxes, others)
    union = _areas(boxes)[:, None] + _areas(others)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _pairwise_intersection(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    sides = np.clip(bottom_right - top_left, 0, None)
    return sides[..., 0] * sides[..., 1]


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def precision_recall_f1(preds: Sequence[Prediction], targets: Sequence[Target], *,
                        iou_threshold: float = 0.5) -> dict[str, float | int]:
    """Precision, recall and F1 of the detections as given (filter by confidence first).

    Per image and class, detections are matched greedily by descending score to the unmatched
    ground-truth box of the same class with the highest IoU >= `iou_threshold`; each box is matched at
    most once. As in COCO, a crowd region (iscrowd) is never a false negative, and a detection that
    matches no regular box but covers a crowd region (intersection over the detection's area >=
    `iou_threshold`) is ignored rather than counted as a false positive.

    Returns:
        {"tp", "fp", "fn", "precision", "recall", "f1"}; a ratio whose denominator is 0 (no detections,
        no ground truth) is 0.0.
    """
    check_lengths(preds, targets)
    tp = fp = fn = 0
    for pred, target in zip(preds, targets):
        boxes, scores, labels = prediction_arrays(pred)
        gt_boxes, gt_labels, crowd = target_arrays(target)
        for label in np.union1d(labels, gt_labels):
            det = boxes[labels == label][np.argsort(-scores[labels == label], kind="stable")]
            regular = gt_boxes[(gt_labels == label) & ~crowd]
            crowd_regions = gt_boxes[(gt_labels == label) & crowd]
            ious = _pairwise_iou(det, regular)
            crowd_cover = _pairwise_intersection(det, crowd_regions) / np.maximum(_areas(det), 1e-12)[:, None]
            matched = np.zeros(len(regular), dtype=bool)
            for index in range(len(det)):
                candidates = np.where(matched, -1.0, ious[index])
                best = int(np.argmax(candidates)) if len(regular) else -1
                if best >= 0 and candidates[best] >= iou_threshold:
                    matched[best] = True
                    tp += 1
                elif not (crowd_cover.shape[1] and crowd_cover[index].max() >= iou_threshold):
                    fp += 1
            fn += int((~matched).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def evaluate_detections(ds: DetectionDataset, preds: Sequence[Prediction], *,
                        tolerance_points: float = 0.5) -> dict[str, Any]:
    """Every detection metric of `preds` on `ds`, as one JSON-able dict.

    Returns:
        {"torchmetrics": map_torchmetrics(...), "pycocotools": coco_eval(...), "agreement": agreement(...),
        "precision", "recall", "f1", "tp", "fp", "fn" (IoU 0.5, detections as given), "images",
        "gt_boxes" (regular boxes, = tp + fn), "crowd_boxes", "pred_boxes"}.
    """
    check_lengths(preds, ds.images)
    tm = map_torchmetrics(preds, ds.images)
    coco = coco_eval(ds, preds)
    operating_point = precision_recall_f1(preds, ds.images)
    crowd_counts = [int(np.asarray(image.iscrowd, dtype=bool).sum()) for image in ds.images]
    return {
        "torchmetrics": tm,
        "pycocotools": coco,
        "agreement": agreement(tm, coco, tolerance_points),
        **{key: operating_point[key] for key in ("precision", "recall", "f1", "tp", "fp", "fn")},
        "images": len(ds.images),
        "gt_boxes": sum(len(image.labels) for image in ds.images) - sum(crowd_counts),
        "crowd_boxes": sum(crowd_counts),
        "pred_boxes": sum(len(pred["labels"]) for pred in preds),
    }

