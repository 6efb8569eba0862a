"""Stage `distill`: train the student with Hinton knowledge distillation from the frozen teacher
(soft term weighted by distill.alpha at temperature distill.temperature, hard labels by 1 - alpha)."""

from edgecompress.distill import DistillationLoss
from edgecompress.classifier import TRAIN_STAGE_PATHS, load_teacher, new_model, train_classifier
from edgecompress.params import Params
from edgecompress.stage import read_training_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {**TRAIN_STAGE_PATHS, "teacher": "teacher checkpoint"})
    params = read_training_params(args.params, Params)  # train.nproc > 1: under torchrun
    teacher, info = load_teacher(args.teacher, args.data)
    kd = params.distill
    init = new_model(params.model.student, key="model.student", small_input=params.model.small_input,
                     weights_dir=params.model.weights_dir, prepared_dir=args.data, seed=params.student.seed)
    train_classifier(stage="distill", prepared_dir=args.data, model=init.model, arch=init.arch, epochs=params.student.epochs,
                     seed=params.student.seed, recipe=params.train, checkpoint_out=args.out,
                     metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live,
                     loss_fn=DistillationLoss(teacher, alpha=kd.alpha, temperature=kd.temperature),
                     before_save=init.before_save(),
                     extra_metrics={"initial_weights": init.summary, "alpha": kd.alpha, "temperature": kd.temperature,
                                    "teacher_accuracy": round(info["meta"]["test_accuracy"], 6),
                                    # quoted from the checkpoint (its sha256 verified on load), not re-measured
                                    "teacher_accuracy_source": f"{args.teacher} (recorded by stage "
                                                               f"{info['meta'].get('stage', '?')} at save time)"})


if __name__ == "__main__":
    run_stage(main)
