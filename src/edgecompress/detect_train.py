"""Fine-tuning of detectors on the detection pipeline's training split (source images outside the
evaluation subset), with per-epoch losses and mAP logged (dvclive).

Two routes, by family:
- `ultralytics`: ultralytics' own trainer (`YOLO.train`: its data loader, augmentation, loss, EMA and
  validator), given a data set folder in YOLO txt format. Its per-epoch losses and validation mAP go to
  our logger through a callback; its built-in DVCLive integration is switched off in this process so
  that one writer logs the run.
- `yolov5` (original checkpoints, which ultralytics' trainer cannot load) and `torchvision`: one loop,
  `fit_detector`, with the family's loss: YOLOv5's `ComputeLoss` (from the `yolov5` package, with its
  default hyper-parameters scaled as its train script scales them) or the loss dict torchvision
  detectors return in training mode. The same loop fine-tunes pruned networks of every family (with
  ultralytics' own `model.loss` for theirs: its trainer would rebuild the unpruned model from the yaml). Mean losses per epoch and the mAP of `detect.evaluate_detector`
  on the evaluation subset (the number detect_eval reports) are logged.

No checkpoint is selected on the evaluation subset: the last epoch's weights are kept (the per-epoch
mAP is monitoring, not model selection, so the numbers detect_eval reports stay unbiased).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.detect import Detector, letterbox, read_image
from edgecompress.params import DETECTION_OPTIMIZERS, as_dict
from edgecompress.train import Logger, make_scheduler, seed_everything

log = logging.getLogger(__name__)

# YOLOv5's hyp.scratch-low.yaml loss settings (the package's defaults for training)
YOLOV5_LOSS_HYP = {"box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
                   "fl_gamma": 0.0, "label_smoothing": 0.0}


def dataset_to_model_classes(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> torch.Tensor:
    """Data set class index -> model output index by name (-1 where the model lacks the class)."""
    index: dict[str, int] = {}
    for i, name in enumerate(model_classes):
        if name:
            index.setdefault(name, i)
    return torch.tensor([index.get(name, -1) for name in dataset_classes], dtype=torch.long)


class DetectionTrainSet(torch.utils.data.Dataset):
    """Images of a `detect_data.DetectionDataset` with their boxes, pre-processed as the detector's
    inference pre-processes them (letterbox for YOLO families, the plain [0, 1] image for torchvision,
    which resizes inside the model), plus a random horizontal flip.

    An item is (image (3, H, W) float, boxes (N, 4) xyxy in input pixels, labels (N,) model indices);
    boxes of classes the model lacks are dropped (counted in `dropped_boxes`).
    """

    def __init__(self, ds: Any, *, imgsz: int, letterboxed: bool, label_map: torch.Tensor, hflip: float) -> None:
        self.ds, self.imgsz, self.letterboxed, self.label_map, self.hflip = ds, imgsz, letterboxed, label_map, hflip
        self.dropped_boxes = sum(int((label_map[torch.from_numpy(im.labels).long()] < 0).sum())
                                 for im in ds.images if len(im.labels))

    def __len__(self) -> int:
        return len(self.ds.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        annotation = self.ds.images[index]
        image = read_image(Path(self.ds.images_dir) / annotation.file_name)
        boxes = torch.from_numpy(np.asarray(annotation.boxes, dtype=np.float32)).reshape(-1, 4)
        labels = self.label_map[torch.from_numpy(np.asarray(annotation.labels, dtype=np.int64))]
        crowd = torch.from_numpy(np.asarray(annotation.iscrowd, dtype=np.int64)).bool()
        keep = (labels >= 0) & ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], labels[keep]
        if self.letterboxed:
            tensor, meta = letterbox(image, self.imgsz)
            boxes = boxes * meta.scale + torch.tensor([meta.pad_x, meta.pad_y, meta.pad_x, meta.pad_y])
        else:
            tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        if self.hflip and torch.rand(()) < self.hflip:
            width = tensor.shape[-1]
            tensor = tensor.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return tensor, boxes, labels


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[list, list, list]:
    images, boxes, labels = zip(*batch)
    return list(images), list(boxes), list(labels)


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

    def __init__(self, model: nn.Module) -> None:
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

    def __call__(self, model: nn.Module, images: list[torch.Tensor], boxes: list[torch.Tensor],
                 labels: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
        losses = model(images, targets)
        return sum(losses.values()), {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}


def loop_settings(spec: Any) -> dict[str, Any]:
    """The training keyword arguments of `fit_detector` / `train_ultralytics` from a `detection.train`
    params block (all but the model to train and the device)."""
    return {k: v for k, v in as_dict(spec).items() if k not in ("model", "device")}


def make_optimizer(params: Sequence[nn.Parameter], name: str, *, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise EdgecompressError(f"detection.train.optimizer={name!r} is invalid: allowed: {', '.join(DETECTION_OPTIMIZERS)}")


def fit_detector(detector: Detector, train_ds: Any, *, epochs: int, batch_size: int, workers: int, optimizer: str,
                 lr: float, momentum: float, weight_decay: float, hflip: float, seed: int,
                 freeze_batchnorm: bool = False, evaluate: Callable[[Detector], dict[str, Any]] | None = None,
                 logger: Logger | None = None, desc: str = "detect_train") -> dict[str, Any]:
    """Fine-tune `detector.model` in place (yolov5 with its BatchNorm layers, i.e. unfused; ultralytics;
    torchvision) on `train_ds` with a per-epoch cosine schedule; the last epoch's weights are kept.

    `evaluate(detector)` (e.g. `evaluate_detector` on the evaluation subset) runs after each epoch and
    its "map" / "map_50" are logged beside the mean loss parts.

    `freeze_batchnorm` keeps BatchNorm running statistics as they are (the layers stay in eval mode;
    their scale and shift still train), as detection fine-tuning usually does with small batches.
    Measured on yolov5n (docs/experiments/detect_finetune_probes.py): re-estimating the statistics on the
    96 letterboxed training images alone (learning rate ~0) lowers subset mAP@.5 62.0 -> 58.0, while a
    pruned network needs them re-estimated (detect_compress does).

    Returns:
        {"epochs", "images", "dropped_boxes", "seconds", "history": [{epoch, lr, loss, <parts>, map, map_50}]}.
    """
    from tqdm.auto import tqdm

    seed_everything(seed, deterministic_kernels=False)  # the flips and the shuffle: a rerun repeats itself
    model, device = detector.model, detector.device
    label_map = dataset_to_model_classes(train_ds.classes, detector.output_classes)
    data = DetectionTrainSet(train_ds, imgsz=detector.imgsz, letterboxed=detector.letterboxed, label_map=label_map,
                             hflip=hflip)
    if len(data) == 0:
        raise EdgecompressError("detection training split is empty: the source has no image outside the subset")
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collate, generator=generator, drop_last=False)
    loss_fn = {"yolov5": lambda: YoloV5Loss(model, detector.imgsz), "ultralytics": lambda: UltralyticsLoss(model),
               "torchvision": TorchvisionLoss}[detector.family]()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
    scheduler = make_scheduler(opt, schedule="cosine", epochs=epochs, step_size=1, gamma=1.0)
    history, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        if freeze_batchnorm:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        sums: dict[str, float] = {}
        seen = 0
        for images, boxes, labels in tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch",
                                          leave=False):
            images = [im.to(device) for im in images]
            boxes, labels = [b.to(device) for b in boxes], [lab.to(device) for lab in labels]
            loss, parts = loss_fn(model, images, boxes, labels)
            if not torch.isfinite(loss):
                raise EdgecompressError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}; lower "
                                        "detection.train.lr or check the boxes")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            count = len(images)
            seen += count
            for key, value in {"loss": sum(parts.values()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value * count
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                               **{f"train/{k}": round(v / max(seen, 1), 6) for k, v in sums.items()}}
        scheduler.step()
        model.eval()
        if evaluate is not None:
            result = evaluate(detector)
            row.update({"val/map": result["map"], "val/map_50": result["map_50"]})
        history.append(row)
        log.info("%s epoch %d/%d: %s", desc, epoch + 1, epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if logger is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    logger.log_metric(key, value)
            logger.next_step()
    model.eval()
    return {"epochs": epochs, "images": len(data), "dropped_boxes": data.dropped_boxes,
            "seconds": round(time.perf_counter() - start, 1), "history": history}


# ----------------------------------------------------------------------------------------------
# ultralytics: its own trainer
def _yolo_folder(ds: Any, folder: Path) -> Path:
    """A YOLO-txt view of `ds` in `folder` (images linked, labels written), so that ultralytics'
    `labels.cache` lands in a scratch folder and never in a DVC-tracked one."""
    from edgecompress.detect_data import write_yolo

    (folder / "images").mkdir(parents=True)
    for image in ds.images:
        (folder / "images" / image.file_name).symlink_to(Path(ds.images_dir, image.file_name).resolve())
    write_yolo(replace(ds, images_dir=folder / "images"), folder / "labels")
    return folder


def _disable_ultralytics_dvclive() -> None:
    """ultralytics starts its own DVCLive logger when dvclive is installed (a global setting); this
    process logs through ours instead, so its callbacks are emptied here, not in the user's settings."""
    with contextlib.suppress(ImportError):
        import ultralytics.utils.callbacks.dvc as dvc_callbacks

        dvc_callbacks.callbacks = {}


def train_ultralytics(detector: Detector, train_ds: Any, val_ds: Any, out: str | Path, *, epochs: int,
                      batch_size: int, workers: int, optimizer: str, lr: float, momentum: float,
                      weight_decay: float, hflip: float, seed: int, device: torch.device,
                      logger: Logger | None = None) -> dict[str, Any]:
    """Fine-tune an ultralytics model with ultralytics' trainer and copy its last checkpoint to `out`.

    The starting point is `detector.weights` (an ultralytics .pt), or the model yaml `detector.arch`
    for random weights. Its validation split is `val_ds` (monitoring only: the last epoch is kept).
    """
    from ultralytics import YOLO

    _disable_ultralytics_dvclive()
    history: list[dict[str, Any]] = []

    def on_fit_epoch_end(trainer: Any) -> None:
        if trainer.epoch >= epochs:  # ultralytics' final validation of its best checkpoint calls this again
            return
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        metrics = trainer.metrics or {}
        row = {"epoch": trainer.epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"],
               **{k: round(float(v), 6) for k, v in losses.items()},
               "val/map": metrics.get("metrics/mAP50-95(B)"), "val/map_50": metrics.get("metrics/mAP50(B)")}
        history.append(row)
        if logger is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    logger.log_metric(key, float(value))
            logger.next_step()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgecompress-ultralytics-") as scratch:
        scratch = Path(scratch)
        _yolo_folder(train_ds, scratch / "train")
        _yolo_folder(val_ds, scratch / "val")
        names = "\n".join(f"  {i}: {name!r}" for i, name in enumerate(train_ds.classes))
        (scratch / "data.yaml").write_text(f"path: {scratch}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
        model = YOLO(detector.weights if not detector.random_weights else detector.arch)
        model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        model.train(data=str(scratch / "data.yaml"), epochs=epochs, imgsz=detector.imgsz, batch=batch_size,
                    workers=workers, optimizer={"sgd": "SGD", "adamw": "AdamW"}[optimizer], lr0=lr,
                    momentum=momentum, weight_decay=weight_decay, fliplr=hflip, seed=seed, deterministic=True,
                    device="cpu" if device.type == "cpu" else device.index or 0, project=str(scratch / "runs"),
                    name="train", exist_ok=True, plots=False, amp=device.type == "cuda", verbose=False,
                    cos_lr=True, val=True)
        last = scratch / "runs" / "train" / "weights" / "last.pt"
        if not last.is_file():
            raise EdgecompressError(f"ultralytics training wrote no checkpoint ({last})")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.copyfile(last, tmp)
        tmp.replace(out)
    return {"epochs": epochs, "images": len(train_ds.images), "dropped_boxes": 0,
            "seconds": round(time.perf_counter() - start, 1), "history": history}


def save_trained(detector: Detector, out: str | Path, *, base: str | Path) -> None:
    """Trained weights in the file format the family loads: yolov5 -> detect_import's format (config,
    classes, state dict; `base` is the imported file it started from), torchvision -> a state dict."""
    from edgecompress.detect import IMPORT_FORMAT
    from edgecompress.io import load_torch, save_torch

    state = {k: v.detach().cpu() for k, v in detector.model.state_dict().items()}
    if detector.family == "yolov5":
        payload = dict(load_torch(base, "imported YOLOv5 model"))
        if payload.get("format") != IMPORT_FORMAT:
            raise EdgecompressError(f"{base}: not a file written by detect_import")
        payload.update(state_dict=state, yaml=copy.deepcopy(detector.model.yaml),
                       source={**payload.get("source", {}), "fine_tuned_from": str(base)})
        save_torch(out, payload)
    else:
        save_torch(out, state)
