"""The one training loop: teacher, student baseline, distillation, pruning fine-tune and QAT all run
through `fit`; they differ only in the model and the loss.

A loss has the signature `loss_fn(logits, targets, inputs) -> scalar` so that distillation can run the
teacher on the same inputs (see `distill.DistillationLoss`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from tqdm.auto import tqdm

from edgecompress import EdgecompressError, distributed
from edgecompress.config import DEVICES, Settings, check, check_choice
from edgecompress.data import AugmentParams
from edgecompress.runtime import amp_enabled

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Logger(Protocol):
    """What `fit` needs of a metrics logger (dvclive.Live satisfies it)."""

    def log_metric(self, name: str, val: float) -> None: ...
    def next_step(self) -> None: ...


SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainParams(Settings):
    """The `train` block: one recipe for teacher, student_baseline and distill (and the defaults of the
    pruning fine-tune and QAT), plus the multi-process settings (`distributed`)."""

    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 64
    lr: float = 0.05  # SGD learning rate at epoch 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    step_size: int = 10  # epochs between decays (schedule: step)
    gamma: float = 0.1  # decay factor (schedule: step)
    amp: bool = True  # mixed precision; only ever enabled on CUDA
    num_workers: int = 0  # DataLoader workers; 0 keeps CPU runs deterministic and light
    augment: AugmentParams = field(default_factory=AugmentParams)
    nproc: int = 1  # processes per node; > 1 runs the stage under torchrun with DistributedDataParallel
    nnodes: int = 1  # machines (torchrun --nnodes); > 1 needs rdzv_endpoint
    node_rank: int = 0  # this machine's index (torchrun --node_rank)
    rdzv_endpoint: str | None = None  # host:port of node 0 (torchrun --rdzv_endpoint)
    sync_batchnorm: bool = True  # BatchNorm over the global batch (SyncBatchNorm; CUDA only)

    def validate(self) -> None:
        check_choice(self.device, "device", DEVICES)
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")
        check(self.lr > 0, "lr", self.lr, "must be a number > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be a number in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be a number >= 0")
        check_choice(self.schedule, "schedule", SCHEDULES)
        check(self.step_size >= 1, "step_size", self.step_size, "must be an integer >= 1")
        check(0 < self.gamma <= 1, "gamma", self.gamma, "must be a number in (0, 1]")
        check(self.num_workers >= 0, "num_workers", self.num_workers, "must be an integer >= 0")
        check(self.nproc >= 1, "nproc", self.nproc, "must be an integer >= 1")
        check(self.nproc == 1 or self.batch_size % self.nproc == 0, "batch_size", self.batch_size,
              f"must be divisible by train.nproc={self.nproc} (the global batch is split across processes)")
        check(self.nnodes >= 1, "nnodes", self.nnodes, "must be an integer >= 1")
        check(0 <= self.node_rank < self.nnodes, "node_rank", self.node_rank, "must be in [0, nnodes)")
        check(self.nnodes == 1 or bool(self.rdzv_endpoint), "rdzv_endpoint", self.rdzv_endpoint,
              "must be host:port of node 0 when nnodes > 1")


@dataclass
class FitResult:
    """What `fit` returns. The model passed in holds the best-validation weights afterwards."""

    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def make_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, epochs: int, step_size: int,
                   gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch LR schedule: cosine annealing to 0 over `epochs`, or step decay."""
    check_choice(schedule, "train.schedule", SCHEDULES)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def _train_epoch(net: nn.Module, loader: Any, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, device: torch.device, use_amp: bool, desc: str,
                 epoch: tuple[int, int], show: bool) -> tuple[float, int, int]:
    """One pass over `loader` (`epoch`: this one's number and the total, 1-based): (summed loss,
    correct predictions, samples) of this process."""
    net.train()
    running_loss, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(tqdm(loader, desc=f"epoch {epoch[0]}/{epoch[1]}", unit="batch", leave=False,
                                       disable=None if show else True)):
        distributed.maybe_fail(step)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = net(x)
            loss = loss_fn(logits, y, x)
        if not torch.isfinite(loss):
            raise EdgecompressError(f"{desc}: loss became {loss.item()} at epoch {epoch[0]}; "
                                    "lower train.lr or check the data")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        running_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return running_loss, correct, seen


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, *, num_classes: int,
             device: torch.device | str = "cpu", amp: bool = False) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, predictions and confusion matrix on a loader.

    Returns:
        {"accuracy": float in [0, 1], "loss": float, "preds": LongTensor, "targets": LongTensor,
         "confusion": LongTensor (C, C), rows = true class}.
    """
    device = torch.device(device)
    model.eval()
    # every process evaluates the whole split (multi-process training included): no cross-rank sync
    accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro", sync_on_compute=False)
    confusion = MulticlassConfusionMatrix(num_classes=num_classes, sync_on_compute=False)
    total_loss, count, preds, targets = 0.0, 0, [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp_enabled(device, amp)):
            logits = model(x)
        logits = logits.float().cpu()
        y = y.cpu()
        if logits.ndim != 2 or logits.shape[1] != num_classes:  # torchmetrics would fail with a traceback
            raise EdgecompressError(f"the model gives {tuple(logits.shape[1:])} outputs per image but the data set has "
                                    f"{num_classes} classes: it was trained on other data; re-run the upstream stages")
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        count += len(y)
        pred = logits.argmax(1)
        accuracy.update(pred, y)
        confusion.update(pred, y)
        preds.append(pred)
        targets.append(y)
    if count == 0:
        raise EdgecompressError("evaluation split is empty")
    return {
        "accuracy": float(accuracy.compute()),
        "loss": total_loss / count,
        "preds": torch.cat(preds),
        "targets": torch.cat(targets),
        "confusion": confusion.compute(),
    }


def fit(model: nn.Module, train_loader: torch.utils.data.DataLoader, val_loader: torch.utils.data.DataLoader,
        *, loss_fn: LossFn, num_classes: int, epochs: int, lr: float, momentum: float = 0.9,
        weight_decay: float = 5e-4, schedule: str = "cosine", step_size: int = 10, gamma: float = 0.1,
        device: torch.device | str = "cpu", amp: bool = False, logger: Logger | None = None,
        epoch_hook: Callable[[int, nn.Module], None] | None = None, desc: str = "train", seed: int = 0,
        sync_batchnorm: bool = True) -> FitResult:
    """Train with SGD + momentum and keep the best-validation weights.

    Args:
        model: trained in place; on return it holds the weights of the best validation epoch
            (highest accuracy, ties broken by lower loss).
        loss_fn: (logits, targets, inputs) -> loss; may hold its own modules (e.g. a teacher).
        epoch_hook: called as hook(epoch, model) before each epoch (QAT uses it to freeze observers
            and BatchNorm statistics for the last epochs).
        logger: receives train/val loss and accuracy and the LR each epoch (dvclive.Live).
        seed, sync_batchnorm: under torchrun (`distributed`), the DistributedSampler's shuffling seed
            and whether BatchNorm statistics span the global batch. Each rank then trains on its share
            of every global batch through DistributedDataParallel; train metrics are summed over the
            ranks; every rank validates on the whole validation split (same result everywhere).
    Returns:
        FitResult with the per-epoch history.
    """
    device = torch.device(device)
    distributed.init_process_group(device)
    device = distributed.local_device(device)
    use_amp = amp_enabled(device, amp)
    model.to(device)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    net = distributed.wrap_model(model, device, sync_batchnorm=sync_batchnorm)
    train_loader, sampler = distributed.shard_loader(train_loader, seed)
    main = distributed.is_main_process()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=momentum > 0)
    scheduler = make_scheduler(optimizer, schedule=schedule, epochs=epochs, step_size=step_size, gamma=gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    best: tuple[float, float] = (-1.0, math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    result = FitResult(best_epoch=-1, best_val_accuracy=0.0, best_val_loss=math.inf)
    start = time.perf_counter()
    for epoch in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=None if main else True):
        if epoch_hook is not None:
            epoch_hook(epoch, model)
        if sampler is not None:
            sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every rank
        running_loss, correct, seen = _train_epoch(net, train_loader, loss_fn, optimizer, scaler, device=device,
                                                   use_amp=use_amp, desc=desc, epoch=(epoch + 1, epochs), show=main)
        current_lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        running_loss, correct, seen = distributed.all_reduce_sum(running_loss, correct, seen, device=device)
        val = evaluate(model, val_loader, num_classes=num_classes, device=device, amp=amp)
        row = {"epoch": epoch + 1, "lr": current_lr, "train_loss": running_loss / max(seen, 1),
               "train_accuracy": correct / max(seen, 1), "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        result.history.append(row)
        if not main:
            log.debug("rank %d epoch %d done", distributed.rank(), epoch + 1)
        else:
            log.info("%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f", desc, epoch + 1, epochs,
                     row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"])
        if logger is not None and main:
            for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
                logger.log_metric(name.replace("_", "/", 1) if name != "lr" else "lr", row[name])
            logger.next_step()
        score = (val["accuracy"], -val["loss"])
        if score > (best[0], -best[1]):
            best = (val["accuracy"], val["loss"])
            best_state = copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_val_accuracy, result.best_val_loss = epoch + 1, val["accuracy"], val["loss"]
    distributed.revert_sync_batchnorm(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
