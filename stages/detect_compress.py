"""Stage `detect_compress`: compressed variants of `detection.compress.model` (ONNX Runtime FP32 and
static INT8, Torch-Pruning of the backbone, FP16 on CUDA), each evaluated on the subset exactly as
detect_eval evaluates the original -> metrics/detect_compress.json, the variant table and a Pareto plot
of mAP@.5 against inference time."""

from pathlib import Path

import torch

from edgecompress import detect_compress as dc
from edgecompress import detect_data, detect_report
from edgecompress.detect import evaluate_detector, evaluation_settings, load_detector
from edgecompress.io import write_json
from edgecompress.params import DetectionPipelineParams, load_params
from edgecompress.pipeline import log, run_stage, stage_args
from edgecompress.train import resolve_device


def main() -> None:
    args = stage_args(__doc__, {"data": "subset directory written by detection_data",
                                "models": "directory for the variants' artifacts",
                                "metrics": "variant metrics JSON to write", "plots": "directory for the Pareto plot"})
    params = load_params(args.params, DetectionPipelineParams).detection
    spec = params.compress
    torch.set_num_threads(params.threads)
    device = resolve_device(params.device)
    subset = detect_data.load_subset(args.data)
    full = detect_data.load_source(params.data)
    calib_paths, disjoint = dc.calibration_paths(full, subset, spec.calibration_images, params.seed)
    chosen = params.models[spec.model]
    detector = load_detector(spec.model, family=chosen.family, arch=chosen.arch, weights=chosen.weights,
                             dataset_classes=subset.classes, imgsz=params.imgsz, device=device)
    wanted = set(spec.variants)
    # images for ONNX tracing, INT8 calibration and the pruning graph trace
    calib = dc.calibration_batch(calib_paths, params.imgsz) if {"onnx_fp32", "onnx_int8", "pruned"} & wanted else None
    Path(args.models).mkdir(parents=True, exist_ok=True)  # the stage's DVC output, even with no ONNX variant
    built: dict = {"fp32": (detector, {"method": "the original model (eager FP32)"})}
    if {"onnx_fp32", "onnx_int8"} & wanted:
        built.update(dc.onnx_variants(detector, args.models, calib, threads=params.threads, int8="onnx_int8" in wanted))
    if "pruned" in wanted:
        built["pruned"] = dc.pruned_variant(detector, spec.prune_ratio, calib.to(device))
    if "fp16" in wanted:
        built["fp16"] = dc.fp16_variant(detector)
    variants = {}
    for name in spec.variants:
        variant, info = built[name]
        if variant is None:
            variants[name] = info
            log.info("%s skipped: %s", name, info["skipped"])
            continue
        row, _ = evaluate_detector(variant, subset, batch_size=spec.batch_size, **evaluation_settings(params))
        variants[name] = {**info, "params": variant.params() or None, **row}
        log.info("%s: mAP %.3f mAP@.5 %.3f, %.1f ms/image inference (model %.1f ms)", name, row["map"],
                 row["map_50"], row["timing"]["inference_ms_per_image"],
                 row["timing"]["blocks"]["model"]["per_image_ms"])
    metrics = {"model": spec.model, "random_weights": detector.random_weights, "batch_size": spec.batch_size,
               "device": str(device), "threads": params.threads, "images": len(subset.images),
               "calibration": {"images": len(calib_paths), "disjoint_from_evaluation": disjoint},
               "variants": variants}
    detect_report.plot_pareto(metrics, Path(args.plots) / detect_report.PARETO_FILE)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
