"""Stage `detect_train`: fine-tune `detection.train.model` on the training split (source images outside
the evaluation subset) -> models/trained/<model>.pt (loadable as that family's weights file, e.g. a
`detection.models` entry), per-epoch losses and subset mAP in dvclive, and a metrics JSON with the
evaluation subset's mAP before and after (the same `evaluate_detector` as detect_eval).

ultralytics models train with ultralytics' trainer; yolov5 and torchvision models with
`detect_train.fit_detector` (see that module)."""

from dataclasses import replace
from pathlib import Path

import torch

from edgecompress import detect_data
from edgecompress import detect_train as dt
from edgecompress.detect import fuse_yolov5, load_detector, subset_monitor, unfused_yolov5
from edgecompress.io import write_json
from edgecompress.params import DetectionPipelineParams, load_params
from edgecompress.pipeline import log, run_stage, stage_args
from edgecompress.train import resolve_device, seed_everything

NO_TRAINING_IMAGES = ("no training images: every source image is in the evaluation subset "
                      "(lower detection.subset_images below the source's image count)")


def main() -> None:
    args = stage_args(__doc__, {"data": "evaluation subset written by detection_data",
                                "train_data": "training split written by detection_data",
                                "out_dir": "directory for the trained weights", "metrics": "metrics JSON to write",
                                "live": "dvclive directory for per-epoch curves"})
    params = load_params(args.params, DetectionPipelineParams).detection
    spec = params.train
    torch.set_num_threads(params.threads)
    seed_everything(params.seed, deterministic_kernels=False)  # random initial weights (yaml / builder) repeat
    device = resolve_device(spec.device)
    subset, train = detect_data.load_subset(args.data), detect_data.load_subset(args.train_data)
    if not train.images:  # the pipeline stays runnable when the whole source is evaluated
        for folder in (Path(args.out_dir), Path(args.live) / "plots" / "metrics"):
            folder.mkdir(parents=True, exist_ok=True)
        write_json(args.metrics, {"model": spec.model, "skipped": NO_TRAINING_IMAGES})
        log.warning("detect_train skipped: %s", NO_TRAINING_IMAGES)
        return
    chosen = params.models[spec.model]
    detector = load_detector(spec.model, family=chosen.family, arch=chosen.arch, weights=chosen.weights,
                             dataset_classes=subset.classes, imgsz=params.imgsz, device=device)
    evaluate = subset_monitor(params, subset)
    before = evaluate(detector)
    out = Path(args.out_dir) / f"{spec.model}.pt"
    hyper = dt.loop_settings(spec)
    from dvclive import Live

    with Live(dir=args.live, save_dvc_exp=False, dvcyaml=None, report=None) as live:
        if detector.family == "ultralytics":
            hyper.pop("freeze_batchnorm")  # ultralytics' trainer manages its own BatchNorm layers
            result = dt.train_ultralytics(detector, train, subset, out, seed=params.seed, device=device, logger=live,
                                          **hyper)
            trained = load_detector(spec.model, family="ultralytics", arch=None, weights=str(out),
                                    dataset_classes=subset.classes, imgsz=params.imgsz, device=device)
        else:
            if detector.family == "yolov5":  # trained with its BatchNorm layers, fused again for inference
                detector = replace(detector, model=unfused_yolov5(chosen.weights).to(device))
            result = dt.fit_detector(detector, train, seed=params.seed, evaluate=evaluate, logger=live, **hyper)
            dt.save_trained(detector, out, base=chosen.weights)
            trained = replace(detector, model=fuse_yolov5(detector.model)) if detector.family == "yolov5" else detector
    after = evaluate(trained)
    keys = ("map", "map_50", "operating_point")
    metrics = {"model": spec.model, "family": detector.family, "arch": detector.arch, "start": detector.weights,
               "random_start": detector.random_weights, "out": str(out), "device": str(device),
               "trainer": "ultralytics YOLO.train" if detector.family == "ultralytics" else "edgecompress fit_detector",
               "settings": hyper, "imgsz": params.imgsz, "train_images": len(train.images),
               "evaluation_images": len(subset.images), **result,
               "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys}}
    write_json(args.metrics, metrics)
    log.info("detect_train %s: %d epochs on %d images in %.0f s; subset mAP@.5 %.3f -> %.3f, mAP %.3f -> %.3f -> %s",
             spec.model, spec.epochs, len(train.images), result["seconds"], before["map_50"], after["map_50"],
             before["map"], after["map"], out)


if __name__ == "__main__":
    run_stage(main)
