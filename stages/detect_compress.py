"""Stage `detect_compress`: compressed variants of `detection.compress.model` (YOLO: ONNX Runtime FP32
and static INT8, Torch-Pruning of the backbone fine-tuned on the training split with detection.train's
settings, FP16 on CUDA; torchvision: FX static INT8 of the backbone), each evaluated on the subset exactly as
detect_eval evaluates the original -> metrics/detect_compress.json, the variant table and a Pareto plot
of mAP@.5 against inference time."""

from pathlib import Path

import torch

from edgecompress import detect_compress as dc
from edgecompress import detect_data, detect_report
from edgecompress.detect import evaluate_detector, evaluation_settings, load_detector, subset_monitor
from edgecompress.io import write_json
from edgecompress.detect_train import fit_detector, loop_settings
from edgecompress.params import DetectionPipelineParams, load_params
from edgecompress.pipeline import log, run_stage, stage_args
from edgecompress.train import resolve_device


def pruned_finetune(params, train_dir: str, subset):
    """The pruned network's fine-tuning (`compress.finetune_epochs` with detection.train's optimizer
    settings on the training split), or None; its subset mAP before and after each epoch is recorded."""
    if params.compress.finetune_epochs == 0:
        return None
    train = detect_data.load_subset(train_dir)
    if not train.images:
        log.warning("pruned variant not fine-tuned: the training split is empty (every source image is evaluated)")
        return None
    # BatchNorm statistics are re-estimated: pruning changed every activation they describe
    hyper = {**loop_settings(params.train), "epochs": params.compress.finetune_epochs, "freeze_batchnorm": False}
    evaluate = subset_monitor(params, subset)

    def finetune(pruned):
        before = evaluate(pruned)  # what pruning alone left
        result = fit_detector(pruned, train, seed=params.seed, desc="pruned", evaluate=evaluate, **hyper)
        return {**result, "before": {"map": before["map"], "map_50": before["map_50"]}}
    return finetune


def main() -> None:
    args = stage_args(__doc__, {"data": "subset directory written by detection_data",
                                "train_data": "training split written by detection_data (pruned fine-tuning)",
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
    yolo = detector.letterboxed
    # images for ONNX tracing, INT8 calibration and the pruning graph trace
    yolo_only = {"onnx_fp32", "onnx_int8", "pruned"} & wanted
    calib = dc.calibration_batch(calib_paths, params.imgsz) if yolo and yolo_only else None
    Path(args.models).mkdir(parents=True, exist_ok=True)  # the stage's DVC output, even with no ONNX variant
    built: dict = {"fp32": (detector, {"method": "the original model (eager FP32)"})}
    if not yolo:
        built.update({name: (None, {"skipped": f"{name} is built for YOLO families (a torchvision detector's resize "
                                               "and NMS run inside the model)"}) for name in yolo_only})
    elif {"onnx_fp32", "onnx_int8"} & wanted:
        built.update(dc.onnx_variants(detector, args.models, calib, threads=params.threads, int8="onnx_int8" in wanted))
    if "pruned" in wanted and yolo:
        built["pruned"] = dc.pruned_variant(detector, spec.prune_ratio, calib.to(device),
                                            finetune=pruned_finetune(params, args.train_data, subset))
    if "fp16" in wanted:
        built["fp16"] = dc.fp16_variant(detector)
    if "fx_int8" in wanted:
        built["fx_int8"] = dc.fx_int8_variant(detector, calib_paths)
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
