"""Stage `detect_profile`: where each detector's time goes, on the first `detection.profile.images`
images: torch.profiler operator tables (top operators by self CPU time, or self CUDA time on a GPU) and
a Chrome trace of the whole batch (pre-processing, model, NMS and post-processing are labelled regions),
the block timer's breakdown, and the peak memory (CUDA allocated on a GPU, process RSS on the CPU).

On a GPU, per-kernel hardware counters come from Nsight Compute around this same stage, e.g.
  ncu --target-processes all --launch-skip 100 --launch-count 20 -o detect_ncu \\
      python ../../stages/detect_profile.py --data data/subset --metrics /tmp/p.json --profile-dir /tmp/prof
"""

from functools import partial
from pathlib import Path

import torch

from edgecompress.bench.contention import LoadPolicy, contention_block, watched
from edgecompress.bench.profile import profile_ops
from edgecompress.bench.timing import BlockTimer
from edgecompress.detection import source
from edgecompress.detection.inference import model_to_dataset_classes, predict_batch, run_detector
from edgecompress.detection.models import load_detector
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.io import read_image, write_json
from edgecompress.runtime import resolve_device
from edgecompress.stage import log, read_params, run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, {"data": "subset directory written by detection_data",
                                "metrics": "profile summary JSON to write",
                                "profile_dir": "directory for operator tables and Chrome traces"})
    params = read_params(args.params, DetectionPipelineParams).detection
    spec = params.profile
    torch.set_num_threads(params.threads)
    device = resolve_device(params.device)
    ds = source.load_subset(args.data)
    paths = [Path(ds.images_dir) / image.file_name for image in ds.images[:spec.images]]
    watch = LoadPolicy.of(params)
    results = {}
    for name, model in params.models.items():
        detector = load_detector(name, model, dataset_classes=ds.classes, imgsz=params.imgsz, device=device)
        # the timed pass is watched for other processes' load (detection.max_load), the profiler's run is not
        (_, timing), load = watched(partial(run_detector, detector, paths, ds.classes, batch_size=spec.batch_size,
                                            conf_threshold=params.conf_threshold, iou_threshold=params.iou_threshold,
                                            max_det=params.max_det, warmup_batches=1), watch, name)
        images = [read_image(p) for p in paths[:spec.batch_size]]
        class_map = model_to_dataset_classes(detector.output_classes, ds.classes)

        def whole_batch(_: torch.Tensor) -> list:
            return predict_batch(detector, images, timer=BlockTimer(device), conf_threshold=params.conf_threshold,
                                 iou_threshold=params.iou_threshold, max_det=params.max_det, class_map=class_map)

        ops = profile_ops(whole_batch, torch.empty(0, device=device), args.profile_dir, name, top=spec.top,
                          warmup=1, iterations=spec.iterations)
        results[name] = {"random_weights": detector.random_weights, "batch_size": spec.batch_size,
                         "images": len(paths), "blocks": timing["blocks"],
                         "inference_ms_per_image": timing["inference_ms_per_image"],
                         "peak_memory_mb": timing["peak_memory_mb"],
                         "peak_memory_kind": "CUDA allocated" if device.type == "cuda" else "process RSS",
                         "profile": ops, **({"load": load} if load else {})}
        log.info("%s: top operator %s; tables and trace in %s", name,
                 ops["top_ops"][0]["name"] if ops["top_ops"] else "none", args.profile_dir)
    write_json(args.metrics, {"device": str(device), "threads": params.threads, "models": results,
                              "contention": contention_block(watch, results)})


if __name__ == "__main__":
    run_stage(main)
