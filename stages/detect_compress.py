"""Stage `detect_compress`: compressed variants of `detection.compress.model` (YOLO: ONNX Runtime FP32
and static INT8, OpenVINO FP32 and INT8, Torch-Pruning of the backbone fine-tuned on the training split
with detection.train's settings and the pruned network on the same runtimes, FP16 on CUDA; torchvision:
FX static INT8 of the backbone), each evaluated on the subset exactly as detect_eval evaluates the
original -> metrics/detect_compress.json (the variant rows, the "pruning" block: MACs removed
against milliseconds saved per runtime, and the "int8" block: the best INT8 variant against FP32's mAP@.5
and the fastest FP32 runtime) and a Pareto plot of mAP@.5 against inference time."""

from pathlib import Path

import torch

from edgecompress.bench.contention import LoadPolicy, contention_block
from edgecompress.detection import charts, compress, pruning, source
from edgecompress.detection.int8_targets import int8_summary
from edgecompress.detection.gate import Gate
from edgecompress.detection.inference import evaluation_settings, subset_monitor
from edgecompress.detection.models import load_detector
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.detection.train import loop_settings
from edgecompress.io import write_json
from edgecompress.runtime import resolve_device
from edgecompress.stage import read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"data": "subset directory written by detection_data",
                                "train_data": "training split written by detection_data (pruned fine-tuning)",
                                "models": "directory for the variants' artifacts",
                                "metrics": "variant metrics JSON to write", "plots": "directory for the Pareto plot"})
    params = read_params(args.params, DetectionPipelineParams).detection
    spec = params.compress
    torch.set_num_threads(params.threads)
    device = resolve_device(params.device)
    subset = source.load_subset(args.data)
    full = source.load_source(params.data)
    calib_paths, disjoint = compress.calibration_paths(full, subset, spec.calibration_images, params.seed)
    detector = load_detector(spec.model, params.models[spec.model], dataset_classes=subset.classes,
                             imgsz=params.imgsz, device=device)
    finetune = pruning.pruned_finetune(args.train_data, epochs=spec.finetune_epochs,
                                       settings=loop_settings(params.train), seed=params.seed,
                                       evaluate=subset_monitor(params, subset), lr=spec.finetune_lr)
    gate = None
    if spec.max_map_drop is not None:  # judged on training-split images: never evaluated, never calibrated with
        judged, gate_disjoint = compress.gate_images(source.load_subset(args.train_data), calib_paths, spec.gate_images,
                                                     params.seed)
        monitor = subset_monitor(params, judged)
        gate = Gate(lambda variant: monitor(variant)["map_50"], spec.max_map_drop, spec.max_float_layers,
                    len(judged.images), gate_disjoint)
    built = compress.build_variants(detector, spec.variants, calibration=calib_paths, out_dir=args.models,
                                    threads=params.threads, prune_ratio=spec.prune_ratio, finetune=finetune,
                                    gate=gate, prune_round_to=spec.prune_round_to, onnx=spec.onnx,
                                    openvino=spec.openvino)
    watch = LoadPolicy.of(params)
    variants = compress.evaluate_variants(built, spec.variants, subset, batch_size=spec.batch_size,
                                          settings=evaluation_settings(params), watch=watch)
    metrics = {"model": spec.model, "random_weights": detector.random_weights, "batch_size": spec.batch_size,
               "device": str(device), "threads": params.threads, "images": len(subset.images),
               "calibration": {"images": len(calib_paths), "disjoint_from_evaluation": disjoint},
               "variants": variants, "pruning": pruning.pruning_summary(variants), "int8": int8_summary(variants),
               "contention": contention_block(watch, variants)}  # each variant's "load"
    charts.plot_pareto(metrics, Path(args.plots) / charts.PARETO_FILE)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
