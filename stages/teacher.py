"""Stage `teacher`: train the teacher on hard labels; keep the best-validation checkpoint."""

from edgecompress.classifier import TRAIN_STAGE_PATHS, new_model, train_classifier
from edgecompress.params import Params
from edgecompress.stage import read_training_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, TRAIN_STAGE_PATHS)
    params = read_training_params(args.params, Params)  # train.nproc > 1: under torchrun
    model, arch = new_model(params.model.teacher, params.model.small_input, args.data,
                            seed=params.teacher.seed)
    train_classifier(stage="teacher", prepared_dir=args.data, model=model, arch=arch, epochs=params.teacher.epochs,
                     seed=params.teacher.seed, recipe=params.train, checkpoint_out=args.out,
                     metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live)


if __name__ == "__main__":
    run_stage(main)
