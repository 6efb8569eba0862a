"""The detector families of the detection pipeline: one registry entry per family, with the facts the
pipeline branches on, as plain data.

A family's network is built by its loader in `detection.models` (registered there with
`@models.loader("<family>")`); everything else that differs between families is read from its entry
here, so adding a family is an entry in `FAMILIES` plus its loader. This module imports nothing, so
the params schema (`detection.params`, which checks `family` against these names) stays cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """What the pipeline needs to know about a detector family besides how to build it."""

    letterboxed: bool  # letterboxed square batch in, raw head out (decoded + NMS'd by us); else images in, boxes out
    head: str | None  # raw head layout `inference.decode_yolo` reads (yolov5 | ultralytics); None: boxes come out
    coco_category_ids: bool  # outputs COCO category ids (91 slots) rather than indices of its own class list
    imported: bool  # a weights file is detect_import's safe file (never a pickle); trained weights use that format
    random_init: bool  # `arch` alone builds it with random weights (weights: null); else weights are required
    fused: bool  # the inference network is Conv+BN fused: training and pruning rebuild the unfused one
    trainer: str  # detect_train's route: "ultralytics" (its own trainer) | "loop" (`train.fit_detector`)
    loss: str  # the loss `fit_detector` trains it with (a key of `losses.LOSSES`)
    exportable: bool  # one tensor in, the raw head tensor out: the ONNX FP32 / INT8 and FP16 variants apply
    prunable: bool  # Torch-Pruning with the head's output convolutions kept (a YOLO Detect head)
    backbone_int8: bool  # `model.backbone` takes FX static INT8 (the fx_int8 variant)


FAMILIES: dict[str, Family] = {
    # original YOLOv5 checkpoints through detect_import, rebuilt with the `yolov5` package
    "yolov5": Family(letterboxed=True, head="yolov5", coco_category_ids=False, imported=True, random_init=False,
                     fused=True, trainer="loop", loss="yolov5", exportable=True, prunable=True, backbone_int8=False),
    # ultralytics weights through detect_import (rebuilt from their model config), or a model yaml (random weights)
    "ultralytics": Family(letterboxed=True, head="ultralytics", coco_category_ids=False, imported=True,
                          random_init=True, fused=False, trainer="ultralytics", loss="ultralytics", exportable=True,
                          prunable=True, backbone_int8=False),
    # torchvision's COCO detectors (SSD, SSDlite, Faster R-CNN): resize, normalise and NMS inside the model
    "torchvision": Family(letterboxed=False, head=None, coco_category_ids=True, imported=False, random_init=True,
                          fused=False, trainer="loop", loss="torchvision", exportable=False, prunable=False,
                          backbone_int8=True),
}
