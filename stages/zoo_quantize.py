"""Stage `zoo_quantize`: dynamic INT8 (Linear layers only, as PyTorch allows) over the batch sizes, FX
static INT8 per engine (x86, fbgemm, qnnpack) and with a custom QConfig, and the other runtimes
(torch.compile, ONNX Runtime FP32/INT8, OpenVINO FP32/NNCF INT8) for every zoo model, calibrated on
images not used for evaluation -> metrics/zoo_quantize.json and two plots."""

import torch

from edgecompress.bench.contention import contention_block
from edgecompress.io import read_json, write_json
from edgecompress.stage import log, read_params, run_stage, stage_args
from edgecompress.zoo.imagenet import ImageCache
from edgecompress.zoo.measure import (DYNAMIC_NOTE, Measurement, dynamic_analysis, fp32_latency, static_analysis,
                                      zoo_inputs)
from edgecompress.zoo.params import ZooPipelineParams
from edgecompress.zoo.report import quantize_timings, write_plots
from edgecompress.zoo.runtimes import Gate, runtime_analysis
from edgecompress.weights import load_pretrained, preprocessing


def main() -> None:
    args = stage_args(__doc__, {"zoo": "metrics/zoo.json of zoo_benchmark (FP32 reference)",
                                "metrics": "metrics JSON to write", "plots": "directory for the plots"})
    params = read_params(args.params, ZooPipelineParams).zoo
    torch.set_num_threads(params.threads)
    fp32 = read_json(args.zoo)
    inputs = zoo_inputs(params, calibration_images=params.calibration_images, gate_images=params.gate_images or 0)
    subset, cache, how = inputs.evaluation, ImageCache(), Measurement.from_params(params)
    results = {}
    for arch, resolved in inputs.models.items():
        transform = preprocessing(resolved)
        images, calibration = cache.get(subset.paths, transform), cache.get(inputs.calibration, transform)
        model = load_pretrained(resolved)
        results[arch] = {"weights": resolved.label, "random_weights": resolved.version is None,
                         "fp32": fp32_latency(model, images, how)}
        if params.dynamic:
            results[arch]["dynamic"] = dynamic_analysis(model, images, subset.targets, how)
        results[arch]["static"] = static_analysis(
            model, images, subset.targets, calibration, how, configs=params.static,
            calibration_batch_size=params.calibration_batch_size, batch_size=params.static_batch_size,
            bias_correction=params.static_bias_correction)
        measured = params.runtimes if params.runtimes_on == "all" or resolved.version is not None else ()
        results[arch]["runtimes"] = runtime_analysis(
            model, images, subset.targets, calibration, how, names=measured,
            batch_sizes=params.runtime_batch_sizes, threads=params.threads,
            calibration_batch_size=params.calibration_batch_size, openvino=params.openvino, onnx=params.onnx,
            gate=Gate(params.max_accuracy_drop, params.max_float_layers, inputs.gate_targets,
                      cache.get(inputs.gate, transform) if inputs.gate else None))
        log.info("%s: %s", arch, {k: v.get("top1", "skipped") for k, v in
                                  {"dynamic": results[arch].get("dynamic", {}), **results[arch]["static"],
                                   **results[arch]["runtimes"]}.items()})
    metrics = {"models": results, "dynamic_note": DYNAMIC_NOTE, "static_configs": list(params.static),
               "static_bias_correction": params.static_bias_correction,
               "static_batch_size": params.static_batch_size, "batch_sizes": list(how.batch_sizes),
               "runtimes": list(params.runtimes), "runtime_batch_sizes": list(params.runtime_batch_sizes),
               "runtimes_on": params.runtimes_on, "onnx_int8": params.onnx.to_dict(),
               "openvino_int8": params.openvino.to_dict(),
               "calibration": {"images": len(inputs.calibration), "batches": params.calibration_batches,
                               "batch_size": params.calibration_batch_size,
                               "source": "the subset's images after the evaluated ones (never evaluated)"},
               "gate": {"budget_points": params.max_accuracy_drop,
                        "images": len(inputs.gate) or len(inputs.calibration),
                        "source": ("the images after the calibration ones (never evaluated nor calibrated with)"
                                   if inputs.gate else "the calibration images")},
               "images": inputs.description,
               "contention": contention_block(how.load, quantize_timings(results))}  # entries' "load" per batch size
    write_plots(fp32, metrics, args.plots)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
