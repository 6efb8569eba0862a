"""Stage `detect_eval`: every detector of `detection.models` on the data subset, at every batch size of
`detection.batch_sizes`: mAP@[.5:.95] / mAP@.5 (torchmetrics, cross-checked with pycocotools' COCOeval
on the same predictions), precision / recall / F1 at `detection.conf_threshold`, and the time of
decoding, pre-processing, the model, NMS and post-processing (each timed pass watched for other
processes' load: detection.max_load) -> metrics/detection.json, box visualizations per batch size and the
mAP-vs-time plots."""

from pathlib import Path

import torch

from edgecompress.bench.contention import LoadPolicy, contention_block
from edgecompress.bench.environment import environment_fingerprint
from edgecompress.detection import charts, data, source, visualize
from edgecompress.detection.inference import evaluate_detector, evaluation_settings
from edgecompress.detection.models import load_detector
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.io import write_json
from edgecompress.runtime import resolve_device
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"data": "subset directory written by detection_data",
                                "metrics": "detection metrics JSON to write", "plots": "directory of the mAP-vs-time plots",
                                "visualizations": "directory for visualizations_batch_<b>/<model>/"})
    params = read_params(args.params, DetectionPipelineParams).detection
    torch.set_num_threads(params.threads)
    device = resolve_device(params.device)
    ds = source.load_subset(args.data)
    watch = LoadPolicy.of(params)
    results = {}
    for name, spec in params.models.items():
        detector = load_detector(name, spec, dataset_classes=ds.classes, imgsz=params.imgsz, device=device)
        entry = {"family": detector.family, "arch": detector.arch, "weights": detector.weights,
                 "random_weights": detector.random_weights, "params": detector.params(),
                 "model_classes": len(detector.classes), "imgsz": params.imgsz if detector.letterboxed else None,
                 "nms": "torchvision batched_nms (timed)" if detector.letterboxed else "inside the model",
                 "batch_sizes": {}}
        for batch_size in params.batch_sizes:
            row, deployed = evaluate_detector(detector, ds, batch_size=batch_size, **evaluation_settings(params),
                                              watch=watch, label=f"{name} b{batch_size}")
            entry["batch_sizes"][str(batch_size)] = row
            visualize.write_visualizations(ds, deployed, Path(args.visualizations) / f"visualizations_batch_{batch_size}"
                                           / name, ds.classes, max_images=params.visualize)
            log.info("%s batch %d: mAP %.3f mAP@.5 %.3f (pycocotools %.3f / %.3f), P %.3f R %.3f, "
                     "%.1f ms/image inference, %.1f ms/image total", name, batch_size, row["map"], row["map_50"],
                     row["pycocotools"]["map"], row["pycocotools"]["map_50"], row["operating_point"]["precision"],
                     row["operating_point"]["recall"], row["timing"]["inference_ms_per_image"],
                     row["timing"]["total_ms_per_image"])
        results[name] = entry
    metrics = {"data": {"images": len(ds.images), **data.summary(ds)},
               "settings": {"conf_threshold": params.conf_threshold, "map_conf_threshold": params.map_conf_threshold,
                            "iou_threshold": params.iou_threshold, "max_det": params.max_det, "imgsz": params.imgsz,
                            "batch_sizes": list(params.batch_sizes), "warmup_batches": params.warmup_batches,
                            "threads": params.threads, "agreement_points": params.map_agreement_points},
               "environment": environment_fingerprint(params.threads, str(device)), "models": results,
               "contention": contention_block(watch, charts.timed_rows(results))}  # each row's "load"
    charts.write_plots(metrics, args.plots)  # git-tracked: REPORT.md embeds these
    charts.write_plots(metrics, args.visualizations)  # the same two, beside the visualizations (DVC-cached)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
