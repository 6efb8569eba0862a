"""Stage `student_baseline`: the student trained on hard labels only, with the same recipe and epochs
as `distill`. It is the control that shows what knowledge distillation buys."""

from edgecompress.pipeline import TRAIN_STAGE_PATHS, read_params, run_stage, stage_args, train_classifier

def main() -> None:
    args = stage_args(__doc__, TRAIN_STAGE_PATHS)
    params = read_params(args.params)
    train_classifier(stage="student_baseline", prepared_dir=args.data, arch=params.model.student,
                     small_input=params.model.small_input, run=params.student, recipe=params.train,
                     checkpoint_out=args.out, metrics_out=args.metrics, plots_dir=args.plots, live_dir=args.live)

if __name__ == "__main__":
    run_stage(main)
