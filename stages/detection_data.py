"""Stage `detection_data`: the evaluation subset of a local detection data set (COCO json, Pascal
VOC XML or YOLO txt; never downloaded): `detection.subset_images` images drawn with `detection.seed`,
copied with their annotations written in all three formats -> data/subset/; the training split of
detect_train (`detection.train_images` of the other source images, never an evaluated one) in the same
layout -> data/train/; and a summary JSON."""

from edgecompress import EdgecompressError, detect_data
from edgecompress.io import write_json
from edgecompress.params import DetectionPipelineParams, load_params
from edgecompress.pipeline import log, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"out": "subset directory to write", "train_out": "training split directory to write",
                                "metrics": "summary JSON to write"})
    params = load_params(args.params, DetectionPipelineParams).detection
    source = params.data
    full = detect_data.load_source(source)
    subset = detect_data.subset(full, params.subset_images, params.seed)
    pool = detect_data.outside(full, subset)
    if params.train_images is not None and params.train_images > len(pool.images):
        raise EdgecompressError(f"detection.train_images={params.train_images}: only {len(pool.images)} source images "
                                "lie outside the evaluation subset (null = all of them)")
    train = detect_data.subset(pool, params.train_images, params.seed)
    detect_data.write_subset(subset, args.out)
    detect_data.write_subset(train, args.train_out)
    summary = {"source": {"format": source.format, "root": source.root, "annotations": source.annotations,
                          "labels": source.labels, "images": len(full.images)},
               "seed": params.seed, **detect_data.summary(subset),
               "train": {k: v for k, v in detect_data.summary(train).items() if k != "boxes_per_class"}}
    write_json(args.metrics, summary)
    log.info("detection subset: %d of %d images, %d boxes, %d classes present -> %s; training split: %d images "
             "-> %s", len(subset.images), len(full.images), summary.get("boxes", 0), summary.get("classes_present", 0),
             args.out, len(train.images), args.train_out)


if __name__ == "__main__":
    run_stage(main)
