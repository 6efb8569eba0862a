"""Stage `teacher`: train the teacher on hard labels (from model.teacher.weights: random, pretrained or a
file) and keep the best-validation checkpoint; with teacher.epochs 0 the given weights are taken as they
are, evaluated and written like a trained teacher."""

from edgecompress.classifier import TRAIN_STAGE_PATHS, new_model, require_same_classes, train_classifier
from edgecompress.params import Params
from edgecompress.stage import read_training_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, TRAIN_STAGE_PATHS)
    params = read_training_params(args.params, Params)  # train.nproc > 1: under torchrun
    init = new_model(params.model.teacher, key="model.teacher", small_input=params.model.small_input,
                     weights_dir=params.model.weights_dir, prepared_dir=args.data, seed=params.teacher.seed)
    if params.teacher.epochs == 0:
        require_same_classes(init, "model.teacher", args.data)
    train_classifier(stage="teacher", prepared_dir=args.data, model=init.model, arch=init.arch,
                     epochs=params.teacher.epochs, seed=params.teacher.seed, recipe=params.train,
                     checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live,
                     extra_metrics={"initial_weights": init.summary}, before_save=init.before_save())


if __name__ == "__main__":
    run_stage(main)
