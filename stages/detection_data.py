"""Stage `detection_data`: the evaluation subset of a local detection data set (COCO json, Pascal
VOC XML or YOLO txt; never downloaded): `detection.subset_images` images drawn with `detection.seed`,
copied with their annotations written in all three formats -> data/subset/; the training split of
detect_train (`detection.train_images` of the other source images, never an evaluated one) in the same
layout -> data/train/; and a summary JSON."""

from edgecompress.detection import data, source
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.io import write_json
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"out": "subset directory to write", "train_out": "training split directory to write",
                                "metrics": "summary JSON to write"})
    params = read_params(args.params, DetectionPipelineParams).detection
    spec = params.data
    full = source.load_source(spec)
    subset, train = source.split_source(full, subset_images=params.subset_images, train_images=params.train_images,
                                        seed=params.seed)
    source.write_subset(subset, args.out)
    source.write_subset(train, args.train_out)
    summary = {"source": {"format": spec.format, "root": spec.root, "annotations": spec.annotations,
                          "labels": spec.labels, "images": len(full.images)},
               "seed": params.seed, **data.summary(subset),
               "train": {k: v for k, v in data.summary(train).items() if k != "boxes_per_class"}}
    write_json(args.metrics, summary)
    log.info("detection subset: %d of %d images, %d boxes, %d classes present -> %s; training split: %d images "
             "-> %s", len(subset.images), len(full.images), summary.get("boxes", 0), summary.get("classes_present", 0),
             args.out, len(train.images), args.train_out)


if __name__ == "__main__":
    run_stage(main)
