"""The one training loop: teacher, student baseline, distillation, pruning fine-tune and QAT all run
through `fit`; they differ only in the model and the loss.

A loss has the signature `loss_fn(logits, targets, inputs) -> scalar` so that distillation can run the
teacher on the same inputs (see `distill.DistillationLoss`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from tqdm.auto import tqdm

from edgecompress import EdgecompressError, distributed

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Logger(Protocol):
    """What `fit` needs of a metrics logger (dvclive.Live satisfies it)."""

    def log_metric(self, name: str, val: float) -> None: ...
    def next_step(self) -> None: ...


def seed_everything(seed: int, *, deterministic_kernels: bool = True) -> None:
    """Seed Python, NumPy and torch, and (by default) ask torch for deterministic kernels.

    On CPU with a fixed thread count this makes two runs with the same params bit-identical;
    `warn_only` keeps CUDA ops without a deterministic variant usable. Quantized CPU kernels
    (e.g. quantized_resize_cpu_) are all flagged as lacking a deterministic variant, so the
    quantize stage passes `deterministic_kernels=False` to avoid a warning per call.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic_kernels, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU. 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgecompressError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """Mixed precision only on CUDA: CPU autocast to bfloat16 is slower than fp32 on most CPUs."""
    return amp and device.type == "cuda"


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
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    raise EdgecompressError(f"train.schedule='{schedule}' is invalid: allowed: cosine, step")


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
        net.train()
        running_loss, correct, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                                           leave=False, disable=None if main else True)):
            distributed.maybe_fail(step)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
                loss = loss_fn(logits, y, x)
            if not torch.isfinite(loss):
                raise EdgecompressError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}; "
                                        "lower train.lr or check the data")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
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
