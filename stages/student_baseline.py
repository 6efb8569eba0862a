"""Stage `student_baseline`: the student trained on hard labels only, with the same recipe and epochs
as `distill`. It is the control that shows what knowledge distillation buys."""

from edgecompress.classifier import TRAIN_STAGE_PATHS, new_model, train_classifier
from edgecompress.params import Params
from edgecompress.stage import read_training_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, TRAIN_STAGE_PATHS)
    params = read_training_params(args.params, Params)  # train.nproc > 1: under torchrun
    init = new_model(params.model.student, key="model.student", small_input=params.model.small_input,
                     weights_dir=params.model.weights_dir, prepared_dir=args.data, seed=params.student.seed)
    train_classifier(stage="student_baseline", prepared_dir=args.data, model=init.model, arch=init.arch,
                     epochs=params.student.epochs, seed=params.student.seed, recipe=params.train,
                     checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live,
                     extra_metrics={"initial_weights": init.summary}, before_save=init.before_save())


if __name__ == "__main__":
    run_stage(main)
