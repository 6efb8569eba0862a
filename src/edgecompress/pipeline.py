"""Plumbing shared by the stage scripts: error handling, and the train → evaluate → write sequence
that the teacher, student_baseline and distill stages (and later fine-tuning) have in common."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.data import load_meta, load_split, make_loader
from edgecompress.distill import hard_label_loss
from edgecompress.io import write_json
from edgecompress.models import arch_config, build_model, model_stats, save_checkpoint
from edgecompress.params import ArchParams, Params, RunParams, TrainParams, load_params
from edgecompress import plots
from edgecompress.train import FitResult, LossFn, evaluate, fit, resolve_device, seed_everything

log = logging.getLogger("edgecompress")

EVAL_BATCH_SIZE = 256  # evaluation only: larger batches are faster and do not change results
TRAIN_STAGE_PATHS = {"data": "prepared data directory", "out": "checkpoint to write",
                     "metrics": "metrics JSON to write", "plots": "directory for PNG plots",
                     "live": "dvclive directory for per-epoch curves"}


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): logging set up, user errors as one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("EDGECOMPRESS_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
    try:
        main()
    except EdgecompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; previous outputs are intact (files are replaced only when complete)",
              file=sys.stderr)
        sys.exit(130)


def stage_args(description: str, paths: dict[str, str]) -> argparse.Namespace:
    """Parse `--params` plus the stage's path arguments (`paths`: name -> help); all required."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=help_text)
    return parser.parse_args()


def read_params(path: str) -> Params:
    """load_params, logged."""
    params = load_params(path)
    log.info("params from %s validated", path)
    return params


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


def train_classifier(*, stage: str, prepared_dir: str | Path, arch: ArchParams, small_input: bool,
                     run: RunParams, recipe: TrainParams, checkpoint_out: str | Path, metrics_out: str | Path,
                     plots_dir: str | Path, live_dir: str | Path,
                     loss_fn: LossFn = hard_label_loss, extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `arch` on the prepared data, keep the best-validation weights, evaluate on test, and
    write checkpoint, metrics JSON, dvclive curves and PNG plots.

    Outputs are written only after training and evaluation succeeded, each atomically, metrics last.

    Returns:
        The metrics dict written to `metrics_out`.
    """
    from dvclive import Live

    seed_everything(run.seed)
    meta = load_meta(prepared_dir)
    num_classes, classes = meta["num_classes"], meta["classes"]
    device = resolve_device(recipe.device)
    log.info("%s: %s (width %s) on %s, %d epochs, data '%s' (%s train images)", stage, arch.arch, arch.width,
             device, run.epochs, meta["name"], meta["splits"]["train"])
    train_loader = make_loader(prepared_dir, "train", batch_size=recipe.batch_size, train=True, seed=run.seed,
                               augment=asdict(recipe.augment), num_workers=recipe.num_workers)
    val_loader = make_loader(prepared_dir, "val", batch_size=EVAL_BATCH_SIZE, train=False, seed=run.seed)
    test_loader = make_loader(prepared_dir, "test", batch_size=EVAL_BATCH_SIZE, train=False, seed=run.seed)
    model = build_model(arch.arch, num_classes, arch.width, small_input)

    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        result: FitResult = fit(
            model, train_loader, val_loader, loss_fn=loss_fn, num_classes=num_classes, epochs=run.epochs,
            lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, schedule=recipe.schedule,
            step_size=recipe.step_size, gamma=recipe.gamma, device=device, amp=recipe.amp, logger=live, desc=stage,
        )
        test = evaluate(model, test_loader, num_classes=num_classes, device=device, amp=recipe.amp)
        live.log_sklearn_plot("confusion_matrix", [classes[i] for i in test["targets"]],
                              [classes[i] for i in test["preds"]], name="confusion_matrix.json")
    log.info("%s: best val accuracy %.4f at epoch %d; test accuracy %.4f (%.1f s training)", stage,
             result.best_val_accuracy, result.best_epoch, test["accuracy"], result.seconds)

    model.cpu().eval()
    save_checkpoint(checkpoint_out, model, arch_config(arch.arch, num_classes, arch.width, small_input),
                    meta={"stage": stage, "data": meta["name"], "classes": classes, "image_size": meta["image_size"],
                          "mean": meta["mean"], "std": meta["std"], "test_accuracy": test["accuracy"]})
    write_eval_plots(stage=stage, test=test, prepared_dir=prepared_dir, classes=classes, plots_dir=plots_dir,
                     history=result.history)
    metrics = classifier_metrics(model, test, meta, checkpoint_out)
    metrics.update({"best_epoch": result.best_epoch, "val_accuracy": round(result.best_val_accuracy, 6),
                    "epochs": run.epochs, "arch": arch.arch, "width": arch.width})
    metrics.update(extra_metrics or {})
    write_json(metrics_out, metrics)
    return metrics


def classifier_metrics(model: nn.Module, test: dict[str, Any], meta: dict[str, Any],
                       checkpoint: str | Path) -> dict[str, Any]:
    """The keys every model-producing stage reports: accuracy, loss, params, MACs, size_mb."""
    size = meta["image_size"]
    stats = model_stats(model, (3, size, size), checkpoint)
    return {"accuracy": round(test["accuracy"], 6), "loss": round(test["loss"], 6), **stats}

