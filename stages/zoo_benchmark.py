"""Stage `zoo_benchmark`: pretrained ImageNet models (official weights from local files, never
downloaded) on an ImageNet image subset: top-1/top-5 against the published figures, params, MACs, size
and latency per batch size (each timing watched for other processes' load: zoo.max_load) ->
metrics/zoo.json and plots/zoo_accuracy_vs_latency.png."""

from pathlib import Path

import torch

from edgecompress.bench.contention import contention_block
from edgecompress.bench.environment import environment_fingerprint
from edgecompress.io import write_json
from edgecompress.stage import log, read_params, run_stage, stage_args
from edgecompress.zoo.imagenet import ImageCache
from edgecompress.zoo.measure import Measurement, benchmark_model, zoo_inputs
from edgecompress.zoo.params import ZooPipelineParams
from edgecompress.zoo.report import PLOT_FILES, plot_accuracy_vs_latency
from edgecompress.weights import preprocessing


def main() -> None:
    args = stage_args(__doc__, {"metrics": "zoo metrics JSON to write", "plots": "directory for the plot"})
    params = read_params(args.params, ZooPipelineParams).zoo
    torch.set_num_threads(params.threads)
    inputs = zoo_inputs(params)
    subset, cache, how = inputs.evaluation, ImageCache(), Measurement.from_params(params)
    log.info("zoo: %d models on %d images (%d classes) from %s", len(inputs.models), len(subset.paths),
             subset.num_classes_present, params.images)
    results = {}
    for arch, resolved in inputs.models.items():
        images = cache.get(subset.paths, preprocessing(resolved))
        results[arch] = benchmark_model(resolved, images, subset.targets, how)
        log.info("%s (%s): top-1 %.3f top-5 %.3f, %.2f ms/image at batch %d", arch, resolved.label,
                 results[arch]["top1"], results[arch]["top5"],
                 results[arch]["latency_ms"][str(how.batch_sizes[0])]["median"], how.batch_sizes[0])
    metrics = {"models": results, "images": inputs.description, "batch_sizes": list(how.batch_sizes),
               "threads": params.threads, "timing": {"warmup": how.warmup, "repeats": how.repeats,
                                                     "min_time_s": how.min_time_s},
               "random_weights": [a for a, r in results.items() if r["random_weights"]],
               "contention": contention_block(how.load, results),  # each model's "load" per batch size
               "environment": environment_fingerprint(params.threads)}
    plot_accuracy_vs_latency(metrics, Path(args.plots) / PLOT_FILES["accuracy_vs_latency"])
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
