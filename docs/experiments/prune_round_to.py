"""What `prune.round_to` and where-to-prune buy on the chain's student (issue 17, item 1): the distilled
student pruned at ratio 0.2 with channel counts kept multiples of 1/4/8/16, and with per-stage ratios
(`prune.ratios`), each timed on eager PyTorch, the FP32 runtimes (ONNX Runtime, OpenVINO) and the INT8
runtime the benchmark found fastest (OpenVINO via NNCF), at the benchmark's settings (bench.threads,
batch 1 and 8, the same timer).

Latency does not depend on the weights' values, so the pruned models are not fine-tuned here; their MAC
reduction and latency are what the prune stage would produce. Run from the repo root on a quiet
machine (unpruned and pruned are timed alternately, 3 rounds, the median ratio kept) after `dvc repro` (it reads models/student.pt and data/prepared):
    .venv/bin/python docs/experiments/prune_round_to.py
The table it printed is in the README (pruning section).
"""
import copy
import sys
import tempfile
from pathlib import Path

import torch

from edgecompress.bench.timing import latency_sweep
from edgecompress.data import load_meta, make_loader
from edgecompress.models import load_checkpoint
from edgecompress.params import Params
from edgecompress.prune import PruneConfig, prune_model
from edgecompress.quantize.artifacts import build_variant, load_artifact
from edgecompress.quantize.common import calibration_tensors
from edgecompress.stage import read_params

RUNTIMES = ("eager", "onnx_fp32", "openvino_fp32", "openvino_int8")

CONFIGS = {  # label: PruneConfig keywords
    **{f"ratio 0.2, round_to {r}": {"ratio": 0.2, "round_to": None if r == 1 else r} for r in (1, 4, 8, 16)},
    "stem + layer1 0.5": {"ratio": 0.0, "ratios": {"conv1": 0.5, "layer1": 0.5}},
    "stem + layer1 0.5, layer2 0.25": {"ratio": 0.0, "ratios": {"conv1": 0.5, "layer1": 0.5, "layer2": 0.25}},
    "stem + layer1 0.5, layer2 0.5": {"ratio": 0.0, "ratios": {"conv1": 0.5, "layer1": 0.5, "layer2": 0.5}},
    "ratio 0.2, stem + layer1 0.5": {"ratio": 0.2, "ratios": {"conv1": 0.5, "layer1": 0.5}},
    "stem + layer1 0.75": {"ratio": 0.0, "ratios": {"conv1": 0.75, "layer1": 0.75}},
}
params = read_params("params.yaml", Params)
wanted = sys.argv[1:] or list(CONFIGS)
torch.set_num_threads(params.bench.threads)
meta = load_meta("data/prepared")
calib = calibration_tensors(make_loader("data/prepared", "train", batch_size=64, train=False, seed=0), 512)
student, _ = load_checkpoint("models/student.pt")
student.eval()


def predictors(model: torch.nn.Module, folder: Path) -> dict:
    out = {}
    for runtime in RUNTIMES:
        out[runtime] = model if runtime == "eager" else load_artifact(
            build_variant(runtime, model, calib=calib, config=params.quantize.config(), out_dir=folder).path)
    return out


def ms(predict, batch: int) -> float:
    with torch.no_grad():
        sweep = latency_sweep(predict, calib[:8], batch_sizes=(batch,), warmup=params.bench.warmup,
                              repeats=params.bench.repeats, min_time_s=params.bench.min_time_s)
    return sweep["latency_ms"][str(batch)]["median"]


def paired(base: dict, pruned: dict, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Latency removed per runtime and batch: unpruned and pruned timed alternately, `rounds` times each,
    the median of the per-round ratios (a drift of the machine hits both sides of a pair alike)."""
    out = {}
    for runtime in RUNTIMES:
        out[runtime] = {}
        for batch in (1, 8):
            ratios = sorted(ms(pruned[runtime], batch) / ms(base[runtime], batch) for _ in range(rounds))
            out[runtime][str(batch)] = 1 - ratios[len(ratios) // 2]
    return out


with tempfile.TemporaryDirectory() as tmp:
    base = predictors(student, Path(tmp) / "unpruned")
    print("unpruned ms/sample (b1 / b8): " + ", ".join(
        f"{r} {ms(base[r], 1):.3f} / {ms(base[r], 8):.3f}" for r in RUNTIMES))
    print("| pruning | conv channels | MACs removed | " + " | ".join(
        f"{r} b8: latency removed (realised)" for r in RUNTIMES) + " | " + " | ".join(
        f"{r} b1" for r in RUNTIMES) + " |")
    for index, label in enumerate(wanted):
        model = copy.deepcopy(student)
        report = prune_model(model, torch.zeros(1, 3, meta["image_size"], meta["image_size"]),
                             PruneConfig(**CONFIGS[label]))
        cut = paired(base, predictors(model.eval(), Path(tmp) / str(index)))
        macs = report["mac_ratio_removed"]
        cells = [f"{100 * cut[r]['8']:.0f}% ({cut[r]['8'] / macs:.2f})" for r in RUNTIMES]
        cells += [f"{100 * cut[r]['1']:.0f}%" for r in RUNTIMES]
        print(f"| {label} | {report['channels_before']} -> {report['channels_after']} | {100 * macs:.1f}% | "
              + " | ".join(cells) + " |", flush=True)
