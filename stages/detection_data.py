"""Stage `detection_data`: the evaluation subset of a local detection data set (COCO json, Pascal
VOC XML or YOLO txt; never downloaded): `detection.subset_images` images drawn with `detection.seed`,
copied with their annotations written in all three formats -> data/subset/, and a summary JSON."""

import shutil
from pathlib import Path

from edgecompress import detect_data
from edgecompress.io import atomic_dir, write_json
from edgecompress.params import DetectionPipelineParams, load_params
from edgecompress.pipeline import log, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"out": "subset directory to write", "metrics": "summary JSON to write"})
    params = load_params(args.params, DetectionPipelineParams).detection
    source = params.data
    full = detect_data.load_dataset(source.format, root=source.root, annotations=source.annotations,
                                    images=source.images, labels=source.labels, classes=source.classes)
    subset = detect_data.subset(full, params.subset_images, params.seed)
    with atomic_dir(args.out) as tmp:
        (tmp / "images").mkdir()
        for image in subset.images:
            target = tmp / "images" / image.file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(full.images_dir) / image.file_name, target)
        subset.images_dir = Path(args.out) / "images"
        detect_data.write_coco(subset, tmp / "annotations.json")
        detect_data.write_yolo(subset, tmp / "labels")
        detect_data.write_voc(subset, tmp / "voc")
        detect_data.write_class_names(subset, tmp / "classes.txt")
    summary = {"source": {"format": source.format, "root": source.root, "annotations": source.annotations,
                          "labels": source.labels, "images": len(full.images)},
               "seed": params.seed, **detect_data.summary(subset)}
    write_json(args.metrics, summary)
    log.info("detection subset: %d of %d images, %d boxes, %d classes present -> %s", len(subset.images),
             len(full.images), summary.get("boxes", 0), summary.get("classes_present", 0), args.out)


if __name__ == "__main__":
    run_stage(main)
