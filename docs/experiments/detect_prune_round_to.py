"""What `detection.compress.prune_round_to` buys on the detector (issue #17, detection part): yolov5n
pruned at each ratio with channel counts kept multiples of 1/4/8/16 (Torch-Pruning's round_to; 1 = exact
counts), its model block (the raw head network, batch 1, letterboxed 640 px calibration images) timed on
eager PyTorch, ONNX Runtime FP32, OpenVINO FP32 and OpenVINO INT8 (NNCF), against the unpruned model on
the same runtime, timed alternately with it (3 rounds, the median speedup: this machine drifts by up
to 30% over a run).

Latency does not depend on the weights' values, so the pruned networks are not fine-tuned here; their MAC
reduction and latency are what detect_compress's pruned / pruned_* variants measure at that ratio and
round_to. Model, image size, threads and calibration images are detect_compress's (read from
pipelines/detection/params.yaml, loaded as the stage loads them); the timer is the benchmark's
(`bench.timing.latency_sweep`).

Run from the repo root on a quiet machine after `dvc repro pipelines/detection/dvc.yaml` (it reads the
pipeline's data/subset and models/yolov5n.safe.pt, and the source images in ../shared/data/coco128):
    .venv/bin/python docs/experiments/detect_prune_round_to.py
    .venv/bin/python docs/experiments/detect_prune_round_to.py --ratios 0.05 --round-to 1 8 --warmup 2 \
        --repeats 5 --min-time 0.2 --calibration-images 4   # a smoke run (minutes)
Prints a markdown table, one row per (ratio, round_to) as it is measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from edgecompress.bench.timing import latency_sweep
from edgecompress.detection import compress, source
from edgecompress.detection.models import Detector, RawHead, load_detector
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.detection.pruning import pruned_variant
from edgecompress.stage import read_params

PIPELINE = Path("pipelines/detection")
RUNTIMES = ("eager", "onnx_fp32", "openvino_fp32", "openvino_int8")


def runtimes(detector: Detector, folder: Path, calib: torch.Tensor, threads: int) -> dict[str, Callable]:
    """The detector's model block on each runtime, built by detect_compress's own builders."""
    built = {**compress.onnx_variants(detector, folder, calib, threads=threads, int8=False),
             **compress.openvino_variants(detector, folder, calib, threads=threads)}
    return {"eager": RawHead(detector.model).eval(), **{name: built[name][0].model for name in RUNTIMES[1:]}}


def latencies(models: dict[str, Callable], sample: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Median model-block ms/image at batch 1 of each runtime."""
    out = {}
    for name, model in models.items():
        with torch.inference_mode():
            sweep = latency_sweep(model, sample, batch_sizes=(1,), warmup=args.warmup, repeats=args.repeats,
                                  min_time_s=args.min_time)
        out[name] = sweep["latency_ms"]["1"]["median"]
    return out


def paired(unpruned: dict[str, Callable], pruned: dict[str, Callable], sample: torch.Tensor,
           args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """(pruned ms, speedup) per runtime: unpruned and pruned timed alternately `args.rounds` times, the
    median of the per-round speedups (the machine's drift hits both sides of a pair alike)."""
    out = {}
    for name in RUNTIMES:
        rounds = []
        for _ in range(args.rounds):
            before = latencies({name: unpruned[name]}, sample, args)[name]
            after = latencies({name: pruned[name]}, sample, args)[name]
            rounds.append((before / after, after))
        out[name] = sorted(rounds)[len(rounds) // 2][::-1]
    return out


def row(ratio: Any, round_to: Any, macs_removed: float, cut: dict[str, tuple[float, float]]) -> str:
    cells = [f"{cut[r][0]:.1f} ({cut[r][1]:.2f}x)" for r in RUNTIMES]
    return f"| {ratio} | {round_to} | {100 * macs_removed:.1f}% | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.25])
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per runtime")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per runtime (at least)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds timed per runtime (at least)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating unpruned/pruned timings per runtime")
    parser.add_argument("--calibration-images", type=int, default=None,
                        help="INT8 calibration images (default: detection.compress.calibration_images)")
    args = parser.parse_args()
    os.chdir(PIPELINE)  # params.yaml's paths are relative to the pipeline's folder
    params = read_params("params.yaml", DetectionPipelineParams).detection
    spec = params.compress
    torch.set_num_threads(params.threads)
    subset = source.load_subset("data/subset")
    calib_paths, _ = compress.calibration_paths(source.load_source(params.data), subset,
                                                args.calibration_images or spec.calibration_images, params.seed)
    calib = compress.calibration_batch(calib_paths, params.imgsz)
    detector = load_detector(spec.model, params.models[spec.model], dataset_classes=subset.classes,
                             imgsz=params.imgsz, device="cpu")
    sample = calib[:1]
    with tempfile.TemporaryDirectory() as tmp:
        unpruned = runtimes(detector, Path(tmp) / "unpruned", calib, params.threads)
        base = latencies(unpruned, sample, args)
        print(f"{spec.model}, batch 1, {params.imgsz} px, {params.threads} thread(s); model-block ms/image "
              "(speedup vs unpruned on the same runtime), no fine-tuning")
        print("| ratio | round_to | MACs removed | " + " | ".join(RUNTIMES) + " |")
        print("|---|---|---|" + "---|" * len(RUNTIMES))
        print("| 0 | - | 0.0% | " + " | ".join(f"{base[r]:.1f}" for r in RUNTIMES) + " |", flush=True)
        for ratio in args.ratios:
            for round_to in args.round_to:
                pruned, record = pruned_variant(detector, ratio, calib, round_to=round_to)
                if pruned is None:
                    print(f"| {ratio} | {round_to} | skipped: {record['skipped']} |", flush=True)
                    continue
                folder = Path(tmp) / f"r{ratio}_{round_to}"
                cut = paired(unpruned, runtimes(pruned, folder, calib, params.threads), sample, args)
                print(row(ratio, round_to, record["mac_ratio_removed"], cut), flush=True)


if __name__ == "__main__":
    main()
