"""Stage `prune`: structured channel pruning of the distilled student with Torch-Pruning (channels
are physically removed), then fine-tuning, optionally with the distillation loss from the teacher.
Before pruning and after every step the model is timed on `prune.latency.runtime` (the benchmark's
timer) and scored on the validation split; `prune.target` may stop the steps at a MAC or latency goal."""

import itertools
from pathlib import Path

import torch

from edgecompress import EdgecompressError, distributed
from edgecompress.bench.pruning import latency_probe, plot_steps
from edgecompress.bench.timing import take_batch
from edgecompress.classifier import EVAL_BATCH_SIZE, TRAIN_STAGE_PATHS, load_teacher, train_classifier
from edgecompress.data import load_meta, make_loader
from edgecompress.distill import DistillationLoss, hard_label_loss
from edgecompress.goals import target
from edgecompress.models import load_checkpoint
from edgecompress.params import Params
from edgecompress.prune import prune_model, slow_int8_depthwise
from edgecompress.runtime import seed_everything
from edgecompress.stage import log, read_training_params, run_stage, stage_args
from edgecompress.train import evaluate

TAYLOR_BATCHES = 4  # gradient batches for Taylor importance: enough for a stable ranking, seconds on CPU


def main() -> None:
    args = stage_args(__doc__, {**TRAIN_STAGE_PATHS, "student": "distilled student checkpoint",
                                "teacher": "teacher checkpoint (KD fine-tuning)"})
    params = read_training_params(args.params, Params)  # train.nproc > 1: under torchrun
    cfg = params.prune
    seed_everything(cfg.seed)
    meta = load_meta(args.data)
    model, info = load_checkpoint(args.student)
    test_loader = make_loader(args.data, "test", batch_size=EVAL_BATCH_SIZE, train=False, seed=cfg.seed)
    before = evaluate(model, test_loader, num_classes=meta["num_classes"])["accuracy"]

    size = meta["image_size"]
    calibration = list(itertools.islice(make_loader(args.data, "train", batch_size=params.train.batch_size,
                                                    train=False, seed=cfg.seed), TAYLOR_BATCHES))
    report = prune_model(model, torch.zeros(1, 3, size, size), cfg.config(), calibration_batches=calibration,
                         **step_probes(params, args.data, calibration[0][0], meta["num_classes"]))
    pruned = evaluate(model, test_loader, num_classes=meta["num_classes"])["accuracy"]
    log.info("accuracy %.4f before pruning, %.4f right after (%.1f%% of channels, %.1f%% of MACs removed)",
             before, pruned, 100 * report["channel_ratio_removed"], 100 * report["mac_ratio_removed"])

    slow = slow_int8_depthwise(model)
    if slow:
        log.warning("%d depthwise convolution(s) keep a channel count above 112 that is not a multiple of 8 (%s): "
                    "PyTorch's x86 FX INT8 runs them on its slow path; prune.round_to: 8 avoids it",
                    len(slow), ", ".join(slow[:5]))
    loss = hard_label_loss
    if cfg.finetune_kd and cfg.finetune_epochs > 0:
        teacher, _ = load_teacher(args.teacher, args.data)
        loss = DistillationLoss(teacher, alpha=params.distill.alpha, temperature=params.distill.temperature)
    report.pop("config")
    steps = report.pop("step_records")
    if not distributed.is_helper_rank():
        plot_steps(steps, Path(args.plots) / "steps.png", title=f"prune steps ({cfg.latency.runtime}, "
                   f"batch {cfg.latency.batch_size})", target=cfg.target.value)
    train_classifier(stage="prune", prepared_dir=args.data, model=model, arch=info["arch"],
                     epochs=cfg.finetune_epochs, seed=cfg.seed, recipe=params.train, lr=cfg.finetune_lr,
                     checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live,
                     loss_fn=loss, extra_metrics={
                         "accuracy_unpruned": round(before, 6), "accuracy_after_pruning": round(pruned, 6),
                         **{k: round(v, 6) if isinstance(v, float) else v for k, v in report.items()},
                         "ratio": cfg.ratio, "ratios": cfg.ratios, "importance": cfg.importance,
                         "global": cfg.global_pruning, "iterative_steps": cfg.iterative_steps,
                         "round_to": cfg.round_to, "target": cfg.target.to_dict(), "latency": cfg.latency.to_dict(),
                         "step_records": steps, "finetune_kd": cfg.finetune_kd,
                         "fx_int8_slow_depthwise": slow},
                     derived_metrics=lambda m: {"targets": {  # the project's goals at the default pruning
                         "mac_reduction": target(report["mac_ratio_removed"], at_least=0.30,
                                                 goal=">= 0.30 of MACs removed"),
                         "accuracy_drop_points": target(100 * (before - m["accuracy"]), at_most=1.0,
                                                        goal="fine-tuned within 1.0 point of the unpruned student")}})




def step_probes(params: Params, prepared_dir: str, sample: torch.Tensor, num_classes: int) -> dict:
    """The latency and validation-accuracy probes run before pruning and after every step; none under
    torchrun (train.nproc > 1), where ranks would time concurrently and timings must not steer models apart."""
    cfg = params.prune
    if distributed.under_torchrun():
        if cfg.target.kind == "latency":
            raise EdgecompressError("prune.target.kind='latency' is invalid with train.nproc > 1: ranks would "
                                    "time the model concurrently and could stop at different steps; use nproc 1")
        return {}
    val = make_loader(prepared_dir, "val", batch_size=EVAL_BATCH_SIZE, train=False, seed=cfg.seed)
    sample = take_batch(sample, cfg.latency.batch_size)
    return {"latency_probe": latency_probe(sample, latency=cfg.latency, bench=params.bench,
                                           quantize=params.quantize.config()),
            "accuracy_probe": lambda m: {"val_accuracy": round(evaluate(m, val, num_classes=num_classes)["accuracy"], 6)}}


if __name__ == "__main__":
    run_stage(main)
