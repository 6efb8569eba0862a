"""The train -> evaluate -> write sequence that every model-producing stage shares (teacher,
student_baseline, distill, the pruning fine-tune, and the zoo's fine-tuning): a model in, a
checkpoint, a metrics JSON, dvclive curves and PNG plots out."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from edgecompress import EdgecompressError, distributed, plots
from edgecompress.data import load_meta, load_split, make_loader
from edgecompress.distill import hard_label_loss
from edgecompress.io import write_json
from edgecompress.init_weights import InitialModel, initial_model
from edgecompress.models import ArchParams, load_checkpoint, model_stats, save_checkpoint
from edgecompress.runtime import resolve_device, seed_everything
from edgecompress.stage import open_live
from edgecompress.train import FitResult, LossFn, TrainParams, evaluate, fit

log = logging.getLogger("edgecompress")

EVAL_BATCH_SIZE = 256  # evaluation only: larger batches are faster and do not change results
TRAIN_STAGE_PATHS = {"data": "prepared data directory", "out": "checkpoint to write",
                     "metrics": "metrics JSON to write", "plots": "directory for PNG plots",
                     "live": "dvclive directory for per-epoch curves"}


def write_eval_plots(*, stage: str, test: dict[str, Any], prepared_dir: str | Path, classes: list[str],
                     plots_dir: str | Path, history: list[dict[str, float]] | None = None) -> None:
    """Confusion matrix, a grid of test predictions and (when trained) the training curves as PNG."""
    plots_dir = Path(plots_dir)
    if history:
        plots.training_curves(history, plots_dir / "training_curves.png", title=stage)
    plots.confusion_matrix(test["confusion"], classes, plots_dir / "confusion_matrix.png",
                           title=f"{stage}: test accuracy {test['accuracy']:.4f}")
    images, _ = load_split(prepared_dir, "test")
    count = min(32, len(images))
    plots.sample_grid(images[:count], test["targets"][:count], test["preds"][:count], classes,
                      plots_dir / "samples.png", title=stage)


def new_model(spec: ArchParams, *, key: str, small_input: bool, weights_dir: str | None, prepared_dir: str | Path,
              seed: int) -> InitialModel:
    """The chain network `spec` describes (`key`: model.teacher / model.student), sized for the prepared
    data set, from its `weights` (random, pretrained or a file: `init_weights.initial_model`)."""
    return initial_model(spec, key=key, num_classes=load_meta(prepared_dir)["num_classes"], small_input=small_input,
                         weights_dir=weights_dir, seed=seed)


def require_same_classes(init: InitialModel, key: str, prepared_dir: str | Path) -> None:
    """For a model taken as it is (teacher.epochs: 0): its weights must have been trained for the prepared
    data set's classes (count, and names where the weights record them)."""
    meta = load_meta(prepared_dir)
    replaced = init.summary.get("head_replaced")
    if replaced:
        raise EdgecompressError(f"teacher.epochs=0 takes {key} as it is, but its weights have {replaced['from_classes']} "
                                f"classes and data set '{meta['name']}' has {meta['num_classes']}; train it "
                                "(teacher.epochs >= 1) or give weights trained for these classes")
    if init.source_classes is not None and init.source_classes != meta["classes"]:
        raise EdgecompressError(f"teacher.epochs=0 takes {key} as it is, but its weights were trained for classes "
                                f"{init.source_classes[:5]}... and data set '{meta['name']}' has {meta['classes'][:5]}...; "
                                "train it (teacher.epochs >= 1) or give weights trained for these classes")


def _fit(stage: str, model: nn.Module, loader: Callable, *, epochs: int, seed: int, recipe: TrainParams,
         loss_fn: LossFn, lr: float | None, num_classes: int, device: Any, live: Any) -> tuple[list, dict]:
    """`train.fit` with the recipe's settings: (per-epoch history, the metrics it adds)."""
    result: FitResult = fit(
        model, loader("train", batch_size=recipe.batch_size, train=True, augment=asdict(recipe.augment),
                      num_workers=recipe.num_workers),
        loader("val", batch_size=EVAL_BATCH_SIZE, train=False), loss_fn=loss_fn,
        num_classes=num_classes, epochs=epochs, lr=lr or recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, schedule=recipe.schedule, step_size=recipe.step_size,
        gamma=recipe.gamma, device=device, amp=recipe.amp, logger=live, desc=stage, seed=seed,
        sync_batchnorm=recipe.sync_batchnorm,
    )
    log.info("%s: best val accuracy %.4f at epoch %d (%.1f s training)", stage,
             result.best_val_accuracy, result.best_epoch, result.seconds)
    return result.history, {"best_epoch": result.best_epoch, "val_accuracy": round(result.best_val_accuracy, 6),
                            "processes": distributed.world_size()}


def score_as_step0(model: nn.Module, val_loader: Any, *, num_classes: int, device: Any, amp: bool,
                   live: Any) -> dict[str, Any]:
    """Validation score of a model that was not trained here (teacher.epochs 0; the quantize stage without
    QAT), logged as step 0 of its dvclive curves: the stage's declared curves then exist and show where
    training would have started."""
    val = evaluate(model, val_loader, num_classes=num_classes, device=device, amp=amp)
    if live is not None:
        live.log_metric("val/loss", val["loss"])
        live.log_metric("val/accuracy", val["accuracy"])
        live.next_step()
    return {"val_accuracy": round(val["accuracy"], 6)}


def train_classifier(*, stage: str, prepared_dir: str | Path, model: nn.Module, arch: dict[str, Any],
                     epochs: int, seed: int, recipe: TrainParams, checkpoint_out: str | Path,
                     metrics_out: str | Path, plots_dir: str | Path, live_dir: str | Path,
                     loss_fn: LossFn = hard_label_loss, lr: float | None = None,
                     extra_metrics: dict[str, Any] | None = None,
                     derived_metrics: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                     before_save: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, Any]:
    """Train `model` on the prepared data (epochs may be 0: evaluate only), keep the best-validation
    weights, evaluate on test, and write checkpoint, metrics JSON, dvclive curves and PNG plots.

    Args:
        arch: the checkpoint's `arch` entry (`models.arch_config`); a pruned model keeps its
            original arch and is rebuilt from the state dict's shapes.
        lr: overrides `recipe.lr` (fine-tuning uses a smaller one).
        derived_metrics: computes extra entries (e.g. goals) from the metrics before they are written.
        before_save: turns the trained model into the plain `arch` architecture before it is saved and
            measured (fine-tuning swaps frozen BatchNorm layers back to ordinary ones).
    Outputs are written only after training and evaluation succeeded, each atomically, metrics last.

    Returns:
        The metrics dict written to `metrics_out` (empty on the helper ranks of a multi-process run).
    """
    seed_everything(seed)
    meta = load_meta(prepared_dir)
    num_classes, classes = meta["num_classes"], meta["classes"]
    if arch["num_classes"] != num_classes:
        raise EdgecompressError(f"{stage}: model has {arch['num_classes']} outputs but data set "
                                f"'{meta['name']}' has {num_classes} classes; re-run the upstream stages")
    device = resolve_device(recipe.device)
    log.info("%s: %s (width %s) on %s, %d epochs, data '%s' (%s train images)", stage, arch["name"],
             arch["width"], device, epochs, meta["name"], meta["splits"]["train"])
    loader = functools.partial(make_loader, prepared_dir, seed=seed)
    main = not distributed.under_torchrun() or os.environ.get("RANK") == "0"  # rank 0 alone writes
    with open_live(live_dir, enabled=main) as live:
        if epochs > 0:
            history, fit_info = _fit(stage, model, loader, epochs=epochs, seed=seed, recipe=recipe, loss_fn=loss_fn,
                                     lr=lr, num_classes=num_classes, device=device, live=live)
        else:  # taken as it is: its validation score is the one point of its curves
            history, fit_info = [], score_as_step0(model, loader("val", batch_size=EVAL_BATCH_SIZE, train=False),
                                                   num_classes=num_classes, device=device, amp=recipe.amp, live=live)
        if not main:
            return {}  # the other ranks' work ends with training; rank 0 evaluates and writes
        test = evaluate(model, loader("test", batch_size=EVAL_BATCH_SIZE, train=False), num_classes=num_classes,
                        device=device, amp=recipe.amp)
        live.log_sklearn_plot("confusion_matrix", [classes[i] for i in test["targets"]],
                              [classes[i] for i in test["preds"]], name="confusion_matrix.json")
    log.info("%s: test accuracy %.4f", stage, test["accuracy"])

    model.cpu().eval()
    if before_save is not None:
        model = before_save(model)
    save_checkpoint(checkpoint_out, model, arch,
                    meta={"stage": stage, "data": meta["name"], "classes": classes, "image_size": meta["image_size"],
                          "mean": meta["mean"], "std": meta["std"], "test_accuracy": test["accuracy"]})
    write_eval_plots(stage=stage, test=test, prepared_dir=prepared_dir, classes=classes, plots_dir=plots_dir,
                     history=history)
    metrics = {**classifier_metrics(model, test, meta, checkpoint_out), **fit_info,
               "epochs": epochs, "arch": arch["name"], "width": arch["width"], **(extra_metrics or {})}
    if derived_metrics is not None:
        metrics.update(derived_metrics(metrics))
    write_json(metrics_out, metrics)
    return metrics


def load_teacher(path: str | Path, prepared_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load the teacher checkpoint and check it was trained for the prepared data set's classes."""
    teacher, info = load_checkpoint(path)
    meta = load_meta(prepared_dir)
    if info["arch"]["num_classes"] != meta["num_classes"] or info["meta"].get("classes") != meta["classes"]:
        raise EdgecompressError(f"{path}: teacher was trained on other classes than data set '{meta['name']}' "
                                f"in {prepared_dir}; re-run the teacher stage")
    log.info("teacher %s loaded (test accuracy %.4f)", info["arch"]["name"], info["meta"]["test_accuracy"])
    return teacher, info


def classifier_metrics(model: nn.Module, test: dict[str, Any], meta: dict[str, Any],
                       checkpoint: str | Path) -> dict[str, Any]:
    """The keys every model-producing stage reports: accuracy, loss, params, MACs, size_mb."""
    size = meta["image_size"]
    stats = model_stats(model, (3, size, size), checkpoint)
    return {"accuracy": round(test["accuracy"], 6), "loss": round(test["loss"], 6), **stats}
