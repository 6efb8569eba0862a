"""Stage `detect_train`: fine-tune `detection.train.model` on the training split (source images outside
the evaluation subset) -> models/trained/<model>.pt (loadable as that family's weights file, e.g. a
`detection.models` entry), per-epoch losses and subset mAP in dvclive, and a metrics JSON with the
evaluation subset's mAP before and after (the same `evaluate_detector` as detect_eval).

ultralytics models train with ultralytics' trainer; yolov5 and torchvision models with
`detection.train.fit_detector` (see that module)."""

from pathlib import Path

import torch

from edgecompress.detection import source
from edgecompress.detection import train as dt
from edgecompress.detection.inference import subset_monitor
from edgecompress.detection.models import load_detector
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.io import write_json
from edgecompress.runtime import resolve_device, seed_everything
from edgecompress.stage import log, open_live, read_params, run_stage, stage_args

NO_TRAINING_IMAGES = ("no training images: every source image is in the evaluation subset "
                      "(lower detection.subset_images below the source's image count)")


def main() -> None:
    args = stage_args(__doc__, {"data": "evaluation subset written by detection_data",
                                "train_data": "training split written by detection_data",
                                "out_dir": "directory for the trained weights", "metrics": "metrics JSON to write",
                                "live": "dvclive directory for per-epoch curves"})
    params = read_params(args.params, DetectionPipelineParams).detection
    spec = params.train
    torch.set_num_threads(params.threads)
    seed_everything(params.seed, deterministic_kernels=False)  # random initial weights (yaml / builder) repeat
    device = resolve_device(spec.device)
    subset, train = source.load_subset(args.data), source.load_subset(args.train_data)
    if not train.images:  # the pipeline stays runnable when the whole source is evaluated
        for folder in (Path(args.out_dir), Path(args.live) / "plots" / "metrics"):
            folder.mkdir(parents=True, exist_ok=True)
        write_json(args.metrics, {"model": spec.model, "skipped": NO_TRAINING_IMAGES})
        log.warning("detect_train skipped: %s", NO_TRAINING_IMAGES)
        return
    detector = load_detector(spec.model, params.models[spec.model], dataset_classes=subset.classes,
                             imgsz=params.imgsz, device=device)
    evaluate = subset_monitor(params, subset)
    before = evaluate(detector)
    out = Path(args.out_dir) / f"{spec.model}.pt"
    with open_live(args.live) as live:
        run = dt.train_detector(detector, train, subset, out, settings=dt.loop_settings(spec), seed=params.seed,
                                evaluate=evaluate, logger=live)
    after = evaluate(run.detector)
    keys = ("map", "map_50", "operating_point")
    metrics = {"model": spec.model, "family": detector.family, "arch": detector.arch, "start": detector.weights,
               "random_start": detector.random_weights, "out": str(out), "device": str(device),
               "trainer": run.trainer, "settings": run.settings, "imgsz": params.imgsz,
               "train_images": len(train.images), "evaluation_images": len(subset.images), **run.result,
               "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys}}
    write_json(args.metrics, metrics)
    log.info("detect_train %s: %d epochs on %d images in %.0f s; subset mAP@.5 %.3f -> %.3f, mAP %.3f -> %.3f -> %s",
             spec.model, spec.epochs, len(train.images), run.result["seconds"], before["map_50"], after["map_50"],
             before["map"], after["map"], out)


if __name__ == "__main__":
    run_stage(main)
