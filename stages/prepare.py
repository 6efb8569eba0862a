"""Stage `prepare`: load the data set named in params.yaml, split it (seeded, stratified) and cache it
as uint8 tensors under data/prepared/."""

from edgecompress.data import prepare_dataset
from edgecompress.params import Params
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"out": "output directory for the prepared splits"})
    data = read_params(args.params, Params).data
    meta = prepare_dataset(name=data.name, root=data.root, image_size=data.image_size,
                           val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                           max_samples=data.max_samples, seed=data.seed, out_dir=args.out)
    log.info("prepared '%s': %d classes, splits %s -> %s", meta["name"], meta["num_classes"], meta["splits"], args.out)


if __name__ == "__main__":
    run_stage(main)
