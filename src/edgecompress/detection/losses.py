"""The losses `train.fit_detector` trains each detector family with (`Family.loss` names one), all
called alike: `loss(model, images, boxes, labels) -> (loss to back-propagate, {part: value})`, with
boxes xyxy in input pixels and labels in the model's class indices."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

# YOLOv5's hyp.scratch-low.yaml loss settings (the package's defaults for training)
YOLOV5_LOSS_HYP = {"box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
                   "fl_gamma": 0.0, "label_smoothing": 0.0}


class YoloV5Loss:
    """YOLOv5's `ComputeLoss` with the package's default loss gains, scaled to the number of detection
    layers, classes and the image size as YOLOv5's train script scales them. Returns the loss YOLOv5
    back-propagates (summed gains x batch size) and its parts per image."""

    parts = ("box", "obj", "cls")

    def __init__(self, model: nn.Module, imgsz: int) -> None:
        from yolov5.utils.loss import ComputeLoss

        head = model.model[-1]
        hyp = dict(YOLOV5_LOSS_HYP)
        hyp["box"] *= 3 / head.nl
        hyp["cls"] *= head.nc / 80 * 3 / head.nl
        hyp["obj"] *= (imgsz / 640) ** 2 * 3 / head.nl
        model.hyp = hyp
        self.compute = ComputeLoss(model)
        self.imgsz = imgsz

    def __call__(self, model: nn.Module, images: list[torch.Tensor], boxes: list[torch.Tensor],
                 labels: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.stack(images)
        rows = []
        for i, (b, lab) in enumerate(zip(boxes, labels)):
            xywh = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], dim=1) / self.imgsz
            rows.append(torch.cat([torch.full((len(b), 1), float(i)), lab[:, None].float(), xywh], dim=1))
        targets = torch.cat(rows).to(batch.device) if rows else torch.zeros((0, 6), device=batch.device)
        loss, items = self.compute(model(batch), targets)
        return loss.sum(), dict(zip(self.parts, (float(v) for v in items)))


class UltralyticsLoss:
    """ultralytics' own detection loss (`model.loss`: box IoU, class BCE and distribution focal loss)
    with ultralytics' default gains; for networks its trainer cannot take, e.g. pruned ones (the
    trainer rebuilds a model from its yaml). Returns the loss it back-propagates and its parts."""

    def __init__(self, model: nn.Module, imgsz: int) -> None:
        from ultralytics.cfg import get_cfg
        from ultralytics.utils import DEFAULT_CFG

        if not hasattr(getattr(model, "args", None), "box"):  # a checkpoint's args are a plain dict
            model.args = get_cfg(DEFAULT_CFG)
        model.criterion = None  # built by model.loss for this network

    def __call__(self, model: nn.Module, images: list[torch.Tensor], boxes: list[torch.Tensor],
                 labels: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.stack(images)
        size = torch.tensor(batch.shape[-1:-3:-1] * 2, dtype=torch.float32, device=batch.device)  # w, h, w, h
        index = torch.cat([torch.full((len(b),), float(i), device=batch.device) for i, b in enumerate(boxes)])
        xyxy = torch.cat(boxes)
        xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1) / size
        loss, items = model.loss({"img": batch, "batch_idx": index, "cls": torch.cat(labels)[:, None].float(),
                                  "bboxes": xywh})
        parts = (items.items() if isinstance(items, dict)
                 else zip(("box_loss", "cls_loss", "dfl_loss"), items))
        return loss.sum(), {k.removesuffix("_loss"): float(v) for k, v in parts}


class TorchvisionLoss:
    """torchvision detectors compute their own losses in training mode (a dict); the sum is trained."""

    def __init__(self, model: nn.Module, imgsz: int) -> None:
        pass  # nothing to set up: the model holds its losses

    def __call__(self, model: nn.Module, images: list[torch.Tensor], boxes: list[torch.Tensor],
                 labels: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
        losses = model(images, targets)
        return sum(losses.values()), {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}



# Family.loss -> the loss class, built as LOSSES[name](model, imgsz)
LOSSES: dict[str, Callable[[nn.Module, int], Callable]] = {
    "yolov5": YoloV5Loss, "ultralytics": UltralyticsLoss, "torchvision": TorchvisionLoss}
