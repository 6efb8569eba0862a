"""Stage `prepare`: load the data set named in params.yaml, split it (seeded, stratified) and cache it
as uint8 tensors under data/prepared/. When the teacher (else the student) starts from pretrained weights
or a checkpoint, the images are prepared as those weights expect (resize/crop ratio, mean/std)."""

from edgecompress.data import prepare_dataset
from edgecompress.init_weights import weights_preprocessing
from edgecompress.params import Params
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"out": "output directory for the prepared splits"})
    params = read_params(args.params, Params)
    data, model = params.data, params.model
    wanted = (weights_preprocessing(spec, data.image_size, model.weights_dir) for spec in (model.teacher, model.student))
    pre = next((p for p in wanted if p is not None), None)
    meta = prepare_dataset(name=data.name, root=data.root, image_size=data.image_size,
                           val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                           max_samples=data.max_samples, seed=data.seed, out_dir=args.out,
                           resize_size=pre.resize_size if pre else None,
                           mean_std=(pre.mean, pre.std) if pre and pre.mean else None,
                           preprocessing_source=pre.source if pre else "data set")
    log.info("prepared '%s': %d classes, splits %s -> %s", meta["name"], meta["num_classes"], meta["splits"], args.out)


if __name__ == "__main__":
    run_stage(main)
