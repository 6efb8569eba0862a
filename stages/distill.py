"""Stage `distill`: train the student with Hinton knowledge distillation from the frozen teacher
(soft term weighted by distill.alpha at temperature distill.temperature, hard labels by 1 - alpha)."""

from edgecompress.distill import DistillationLoss
from edgecompress.models import load_checkpoint
from edgecompress.pipeline import TRAIN_STAGE_PATHS, log, read_params, run_stage, stage_args, train_classifier


def main() -> None:
    args = stage_args(__doc__, {**TRAIN_STAGE_PATHS, "teacher": "teacher checkpoint"})
    params = read_params(args.params)
    teacher, info = load_checkpoint(args.teacher)
    log.info("teacher %s loaded (test accuracy %.4f)", info["arch"]["name"], info["meta"]["test_accuracy"])
    kd = params.distill
    loss = DistillationLoss(teacher, alpha=kd.alpha, temperature=kd.temperature)
    train_classifier(stage="distill", prepared_dir=args.data, arch=params.model.student,
                     small_input=params.model.small_input, run=params.student, recipe=params.train,
                     checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live,
                     loss_fn=loss, extra_metrics={"alpha": kd.alpha, "temperature": kd.temperature,
                                                  "teacher_accuracy": info["meta"]["test_accuracy"]})


if __name__ == "__main__":
    run_stage(main)
