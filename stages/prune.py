"""Stage `prune`: structured channel pruning of the distilled student with Torch-Pruning (channels
are physically removed), then fine-tuning, optionally with the distillation loss from the teacher."""

import itertools

import torch

from edgecompress.classifier import EVAL_BATCH_SIZE, TRAIN_STAGE_PATHS, load_teacher, train_classifier
from edgecompress.data import load_meta, make_loader
from edgecompress.distill import DistillationLoss, hard_label_loss
from edgecompress.goals import target
from edgecompress.models import load_checkpoint
from edgecompress.params import Params
from edgecompress.prune import prune_model
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
    calibration = make_loader(args.data, "train", batch_size=params.train.batch_size, train=False, seed=cfg.seed)
    report = prune_model(model, torch.zeros(1, 3, size, size), cfg.config(),
                         calibration_batches=list(itertools.islice(calibration, TAYLOR_BATCHES)))
    pruned = evaluate(model, test_loader, num_classes=meta["num_classes"])["accuracy"]
    log.info("accuracy %.4f before pruning, %.4f right after (%.1f%% of channels, %.1f%% of MACs removed)",
             before, pruned, 100 * report["channel_ratio_removed"], 100 * report["mac_ratio_removed"])

    loss = hard_label_loss
    if cfg.finetune_kd and cfg.finetune_epochs > 0:
        teacher, _ = load_teacher(args.teacher, args.data)
        loss = DistillationLoss(teacher, alpha=params.distill.alpha, temperature=params.distill.temperature)
    report.pop("config")
    train_classifier(stage="prune", prepared_dir=args.data, model=model, arch=info["arch"],
                     epochs=cfg.finetune_epochs, seed=cfg.seed, recipe=params.train, lr=cfg.finetune_lr,
                     checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live,
                     loss_fn=loss, extra_metrics={
                         "accuracy_unpruned": round(before, 6), "accuracy_after_pruning": round(pruned, 6),
                         **{k: round(v, 6) if isinstance(v, float) else v for k, v in report.items()},
                         "ratio": cfg.ratio, "importance": cfg.importance, "global": cfg.global_pruning,
                         "iterative_steps": cfg.iterative_steps, "finetune_kd": cfg.finetune_kd},
                     derived_metrics=lambda m: {"targets": {  # the project's goals at the default ratio 0.2
                         "mac_reduction": target(report["mac_ratio_removed"], at_least=0.30,
                                                 goal=">= 0.30 of MACs removed"),
                         "accuracy_drop_points": target(100 * (before - m["accuracy"]), at_most=1.0,
                                                        goal="fine-tuned within 1.0 point of the unpruned student")}})


if __name__ == "__main__":
    run_stage(main)
