"""Fine-tuning of detectors on the detection pipeline's training split (source images outside the
evaluation subset), with per-epoch losses and mAP logged (dvclive).

Two routes, by family (`Family.trainer`):
- `ultralytics`: ultralytics' own trainer (`DetectionTrainer`, what `YOLO.train` runs: its data loader,
  augmentation, loss, EMA and validator), given a data set folder in YOLO txt format. It starts from
  the detector's network (rebuilt from detect_import's safe file, or a yaml's random one) and its
  last-epoch EMA weights are written in that safe format: no ultralytics pickle is loaded (its final
  re-validation of best.pt and its CUDA AMP check, which downloads and unpickles yolo26n.pt, are
  skipped). Its per-epoch losses and validation mAP go to our logger through a callback; its built-in
  DVCLive integration is switched off in this process so that one writer logs the run.
- `loop` (original YOLOv5 checkpoints, which ultralytics' trainer cannot load, and torchvision): one
  loop, `fit_detector`, with the family's loss (`detection.losses`): YOLOv5's `ComputeLoss` (from the
  `yolov5` package, with its default hyper-parameters scaled as its train script scales them) or the
  loss dict torchvision detectors return in training mode. The same loop fine-tunes pruned networks of
  every family (with ultralytics' own `model.loss` for theirs: its trainer would rebuild the unpruned
  model from the yaml). Mean losses per epoch and the mAP of `inference.evaluate_detector` on the
  evaluation subset (the number detect_eval reports) are logged.

No checkpoint is selected on the evaluation subset: the last epoch's weights are kept (the per-epoch
mAP is monitoring, not model selection, so the numbers detect_eval reports stay unbiased).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edgecompress import EdgecompressError
from edgecompress.detection.data import DetectionDataset
from edgecompress.detection.formats import write_yolo
from edgecompress.detection.inference import image_tensor, letterbox
from edgecompress.detection.losses import LOSSES
from edgecompress.detection.models import (Detector, fuse_network, imported_payload, load_detector,
                                           read_imported, unfused_network)
from edgecompress.detection.params import OPTIMIZERS, DetectionTrainParams, DetectorParams
from edgecompress.io import read_image, save_torch
from edgecompress.runtime import seed_everything
from edgecompress.train import Logger, make_scheduler

log = logging.getLogger(__name__)


def dataset_to_model_classes(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> torch.Tensor:
    """Data set class index -> model output index by name (-1 where the model lacks the class)."""
    index: dict[str, int] = {}
    for i, name in enumerate(model_classes):
        if name:
            index.setdefault(name, i)
    return torch.tensor([index.get(name, -1) for name in dataset_classes], dtype=torch.long)


class DetectionTrainSet(torch.utils.data.Dataset):
    """Images of a `DetectionDataset` with their boxes, pre-processed as the detector's
    inference pre-processes them (letterbox for YOLO families, the plain [0, 1] image for torchvision,
    which resizes inside the model), plus a random horizontal flip.

    An item is (image (3, H, W) float, boxes (N, 4) xyxy in input pixels, labels (N,) model indices);
    boxes of classes the model lacks are dropped (counted in `dropped_boxes`).
    """

    def __init__(self, ds: DetectionDataset, *, imgsz: int, letterboxed: bool, label_map: torch.Tensor, hflip: float) -> None:
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
            tensor = image_tensor(image)
        if self.hflip and torch.rand(()) < self.hflip:
            width = tensor.shape[-1]
            tensor = tensor.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return tensor, boxes, labels


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[list, list, list]:
    images, boxes, labels = zip(*batch)
    return list(images), list(boxes), list(labels)


def loop_settings(spec: DetectionTrainParams) -> dict[str, Any]:
    """The training keyword arguments of `fit_detector` / `train_ultralytics` from a `detection.train`
    params block (all but the model to train and the device)."""
    return {k: v for k, v in spec.to_dict().items() if k not in ("model", "device")}


def make_optimizer(params: Sequence[nn.Parameter], name: str, *, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise EdgecompressError(f"detection.train.optimizer={name!r} is invalid: allowed: {', '.join(OPTIMIZERS)}")


def _train_epoch(model: nn.Module, loader: Any, loss_fn: Callable, opt: torch.optim.Optimizer,
                 device: torch.device, *, desc: str, epoch: int, epochs: int) -> dict[str, float]:
    """Epoch `epoch` (from 1): one pass over `loader`; returns the mean loss and loss parts per image
    (rounded to 6 digits)."""
    sums: dict[str, float] = {}
    seen = 0
    for images, boxes, labels in tqdm(loader, desc=f"{desc} epoch {epoch}/{epochs}", unit="batch", leave=False):
        images = [im.to(device) for im in images]
        boxes, labels = [b.to(device) for b in boxes], [lab.to(device) for lab in labels]
        loss, parts = loss_fn(model, images, boxes, labels)
        if not torch.isfinite(loss):
            raise EdgecompressError(f"{desc}: loss became {loss.item()} at epoch {epoch}; lower "
                                    "detection.train.lr or check the boxes")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        count = len(images)
        seen += count
        for key, value in {"loss": sum(parts.values()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value * count
    return {k: round(v / max(seen, 1), 6) for k, v in sums.items()}


def fit_detector(detector: Detector, train_ds: DetectionDataset, *, epochs: int, batch_size: int, workers: int,
                 optimizer: str, lr: float, momentum: float, weight_decay: float, hflip: float, seed: int,
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

    `detector.model` is trained as it is: a family whose inference network is fused trains the
    unfused one (`models.unfused_network`), as `train_detector` arranges.

    Returns:
        {"epochs", "images", "dropped_boxes", "seconds", "history": [{epoch, lr, loss, <parts>, map, map_50}]}.
    """
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
    loss_fn = LOSSES[detector.facts.loss](model, detector.imgsz)
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
        means = _train_epoch(model, loader, loss_fn, opt, device, desc=desc, epoch=epoch + 1, epochs=epochs)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                               **{f"train/{k}": v for k, v in means.items()}}
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
def _yolo_folder(ds: DetectionDataset, folder: Path) -> Path:
    """A YOLO-txt view of `ds` in `folder` (images linked, labels written), so that ultralytics'
    `labels.cache` lands in a scratch folder and never in a DVC-tracked one."""
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


@contextlib.contextmanager
def _no_amp_check() -> Iterator[None]:
    """ultralytics' AMP check (CUDA) downloads yolo26n.pt and loads it with `YOLO(path)`, a full unpickling of
    a foreign file: skipped, AMP left on (what the check concludes when it cannot download)."""
    import ultralytics.engine.trainer as engine

    original = engine.check_amp
    engine.check_amp = lambda *args, **kwargs: True
    try:
        yield
    finally:
        engine.check_amp = original


def _ultralytics_trainer(detector: Detector, data_yaml: Path, runs: Path, *, epochs: int, batch_size: int,
                         workers: int, optimizer: str, lr: float, momentum: float, weight_decay: float, hflip: float,
                         seed: int, device: torch.device) -> Any:
    """ultralytics' `DetectionTrainer` set up as `YOLO.train` sets it up for a loaded model (a network of the
    data set's class count, weights transferred by name), starting from `detector`'s network, not a file."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    config = copy.deepcopy(detector.model.yaml)
    args = {"model": config.get("yaml_file") or detector.arch, "task": "detect", "mode": "train",
            "data": str(data_yaml), "epochs": epochs, "imgsz": detector.imgsz, "batch": batch_size,
            "workers": workers, "optimizer": {"sgd": "SGD", "adamw": "AdamW"}[optimizer], "lr0": lr,
            "momentum": momentum, "weight_decay": weight_decay, "fliplr": hflip, "seed": seed, "deterministic": True,
            "device": "cpu" if device.type == "cpu" else device.index or 0, "project": str(runs), "name": "train",
            "exist_ok": True, "plots": False, "amp": device.type == "cuda", "verbose": False, "cos_lr": True,
            "val": True}
    trainer = DetectionTrainer(overrides=args)
    start = None if detector.random_weights else unfused_network(detector)
    trainer.model = trainer.get_model(cfg=config, weights=start, verbose=False)
    trainer.final_eval = lambda: None  # re-validates best.pt (unpickling it); the last epoch is kept, not the best
    return trainer


def train_ultralytics(detector: Detector, train_ds: DetectionDataset, val_ds: DetectionDataset, out: str | Path, *,
                      epochs: int, batch_size: int, workers: int, optimizer: str, lr: float, momentum: float,
                      weight_decay: float, hflip: float, seed: int, device: torch.device,
                      logger: Logger | None = None) -> dict[str, Any]:
    """Fine-tune an ultralytics detector with ultralytics' trainer and write its last-epoch EMA weights
    (what its last.pt holds, in float32) to `out` in detect_import's safe format.

    The starting point is `detector`'s network (detect_import's file, or the yaml `detector.arch` with
    random weights). Its validation split is `val_ds` (monitoring only: the last epoch is kept).
    """
    _disable_ultralytics_dvclive()
    history: list[dict[str, Any]] = []

    def on_fit_epoch_end(trainer: Any) -> None:
        if trainer.epoch >= epochs:  # ultralytics' final validation of its best checkpoint (skipped here) calls this
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
        trainer = _ultralytics_trainer(detector, scratch / "data.yaml", scratch / "runs", epochs=epochs,
                                       batch_size=batch_size, workers=workers, optimizer=optimizer, lr=lr,
                                       momentum=momentum, weight_decay=weight_decay, hflip=hflip, seed=seed,
                                       device=device)
        trainer.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        with _no_amp_check():
            trainer.train()
    if trainer.ema is None:
        raise EdgecompressError("ultralytics training produced no model (no epoch ran)")
    trained = copy.deepcopy(trainer.ema.ema).float().cpu()
    source = {"fine_tuned_from": detector.weights if not detector.random_weights else detector.arch}
    save_torch(out, imported_payload(trained, "ultralytics", train_ds.classes, source))
    return {"epochs": epochs, "images": len(train_ds.images), "dropped_boxes": 0,
            "seconds": round(time.perf_counter() - start, 1), "history": history}


def save_trained(detector: Detector, out: str | Path, *, base: str | Path) -> None:
    """Trained weights in the file format the family loads: an imported family (`Family.imported`:
    yolov5) -> detect_import's format (config, classes, state dict; `base` is the imported file it
    started from), others (torchvision) -> a state dict."""
    state = {k: v.detach().cpu() for k, v in detector.model.state_dict().items()}
    if detector.facts.imported:
        payload = dict(read_imported(base, detector.family))
        payload.update(state_dict=state, yaml=copy.deepcopy(detector.model.yaml),
                       source={**payload.get("source", {}), "fine_tuned_from": str(base)})
        save_torch(out, payload)
    else:
        save_torch(out, state)


# ----------------------------------------------------------------------------------------------
# detect_train: the family's route
TRAINER_LABELS = {"ultralytics": "ultralytics DetectionTrainer", "loop": "edgecompress fit_detector"}


@dataclass
class TrainRun:
    """A finished `train_detector`: the trained detector (ready for inference) and what the metrics record."""

    detector: Detector
    trainer: str  # how it was trained (TRAINER_LABELS)
    settings: dict[str, Any]  # the training settings the trainer was given
    result: dict[str, Any]  # {"epochs", "images", "dropped_boxes", "seconds", "history"}


def train_detector(detector: Detector, train_ds: DetectionDataset, eval_ds: DetectionDataset, out: str | Path, *,
                   settings: dict[str, Any], seed: int, evaluate: Callable[[Detector], dict[str, Any]],
                   logger: Logger | None = None) -> TrainRun:
    """Fine-tune `detector` on `train_ds` by its family's route (`Family.trainer`) and write the
    trained weights to `out` in the file format the family loads.

    Args:
        eval_ds: the evaluation subset (ultralytics' trainer validates on it; monitoring only).
        settings: `loop_settings(detection.train)`.
        evaluate: the per-epoch subset evaluation of our loop (`inference.subset_monitor`).
    """
    facts, device = detector.facts, detector.device
    if facts.trainer == "ultralytics":
        settings = {k: v for k, v in settings.items() if k != "freeze_batchnorm"}  # it manages its BatchNorm
        result = train_ultralytics(detector, train_ds, eval_ds, out, seed=seed, device=device, logger=logger,
                                   **settings)
        trained = load_detector(detector.name, DetectorParams(family=detector.family, weights=str(out)),
                                dataset_classes=eval_ds.classes, imgsz=detector.imgsz, device=device)
        return TrainRun(trained, TRAINER_LABELS[facts.trainer], settings, result)
    if facts.fused:  # trained with its BatchNorm layers, fused again for inference
        detector = replace(detector, model=unfused_network(detector).to(device))
    result = fit_detector(detector, train_ds, seed=seed, evaluate=evaluate, logger=logger, **settings)
    save_trained(detector, out, base=detector.weights)
    trained = replace(detector, model=fuse_network(detector.model)) if facts.fused else detector
    return TrainRun(trained, TRAINER_LABELS[facts.trainer], settings, result)
