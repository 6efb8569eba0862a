"""What pruning buys in time, not only in MACs (issue 17).

- `latency_probe`: the prune stage's timer for one model on one runtime (eager PyTorch, or the model
  exported to ONNX Runtime / OpenVINO FP32 by the quantize package's own builders), with the
  benchmark's timer and thread count; the latency target of `prune.target` stops on it.
- `plot_steps`: the prune stage's step records (accuracy and latency against the step).
- `reference_specs` / `pruning_effect`: the benchmark measures the unpruned student on the runtimes
  where the pruned model ran fastest (best FP32, best INT8), so the report can state the latency
  reduction on each and the realised fraction: latency reduction / MAC reduction.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from edgecompress.bench.chain import KIND_OF_RUNTIME, VariantSpec, load_predict
from edgecompress.bench.config import BenchConfig, PruneLatencyConfig
from edgecompress.bench.results import FP32_RUNTIMES, fastest, latency_of
from edgecompress.bench.timing import latency_sweep, sig
from edgecompress.plots import plt, save_figure
from edgecompress.quantize.artifacts import build_variant
from edgecompress.quantize.config import VARIANTS, QuantizeConfig, is_int8_variant

def _predictor(model: nn.Module, runtime: str, sample: torch.Tensor, folder: Path, quantize: QuantizeConfig,
               threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if runtime == "eager":
        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)
        return predict
    built = build_variant(runtime, copy.deepcopy(model).eval(), calib=sample, config=quantize, out_dir=folder)
    kind = KIND_OF_RUNTIME[VARIANTS[runtime].runtime]
    return load_predict(VariantSpec(runtime, str(built.path), kind, "prune"), threads=threads)[0]


def latency_probe(sample: torch.Tensor, *, latency: PruneLatencyConfig, bench: BenchConfig,
                  quantize: QuantizeConfig) -> Callable[[nn.Module], dict[str, float]]:
    """model -> {"latency_ms": per-sample median at `latency.batch_size`} on `latency.runtime`.

    Timed as the benchmark times (`latency_sweep` with `latency`'s warmup/repeats/min_time_s, bench.threads
    intra-op threads; the caller's thread count is restored afterwards). Exports go to a temporary
    folder and are deleted.
    """
    def probe(model: nn.Module) -> dict[str, float]:
        threads = torch.get_num_threads()
        was_training = model.training
        try:
            torch.set_num_threads(bench.threads)
            model.eval()
            with tempfile.TemporaryDirectory() as tmp:
                predict = _predictor(model, latency.runtime, sample, Path(tmp), quantize, bench.threads)
                sweep = latency_sweep(predict, sample, batch_sizes=(latency.batch_size,), warmup=latency.warmup,
                                      repeats=latency.repeats, min_time_s=latency.min_time_s)
        finally:
            torch.set_num_threads(threads)
            model.train(was_training)
        return {"latency_ms": sweep["latency_ms"][str(latency.batch_size)]["median"]}
    return probe


def plot_steps(records: Sequence[dict[str, float]], path: str | Path, title: str, target: float | None = None) -> None:
    """Validation accuracy and latency (both as measured after each pruning step; step 0 = unpruned)
    against the step, with the MACs kept on the latency axis's scale for comparison."""
    steps = [r["step"] for r in records]
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(9, 3.4))
    if all("val_accuracy" in r for r in records):
        ax_acc.plot(steps, [100 * r["val_accuracy"] for r in records], marker="o", ms=4)
    ax_acc.set(xlabel="pruning step", ylabel="validation accuracy (%)", title="accuracy (before fine-tuning)")
    if all("latency_ms" in r for r in records):
        first = records[0]["latency_ms"]
        ax_lat.plot(steps, [r["latency_ms"] / first for r in records], marker="o", ms=4, label="latency")
    ax_lat.plot(steps, [r["macs"] / records[0]["macs"] for r in records], marker="s", ms=4, ls="--", label="MACs")
    if target is not None:
        ax_lat.axhline(target, color="grey", ls=":", label="target")
    ax_lat.set(xlabel="pruning step", ylabel="fraction of the unpruned model", title="latency and MACs")
    for ax in (ax_acc, ax_lat):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_lat.legend()
    fig.suptitle(title, y=1.03)
    save_figure(fig, path)


# The benchmark's side: the unpruned student on the pruned model's fastest runtimes
def headline_batch(batch_sizes: Sequence[int]) -> str:
    """The batch size the pruning figures headline: 8 (the project's goals) when measured, else the largest."""
    return "8" if 8 in batch_sizes else str(max(batch_sizes))


def best_runtimes(variants: dict[str, Any], batch: str) -> dict[str, str | None]:
    """{"best_fp32": fastest FP32 runtime of the pruned model, "best_int8": fastest INT8 variant that needs
    no training (QAT would have to be re-trained on the unpruned model)} at `batch`."""
    int8 = [n for n in variants if n in VARIANTS and is_int8_variant(n) and VARIANTS[n].builder != "qat"]
    return {"best_fp32": fastest(variants, FP32_RUNTIMES, batch), "best_int8": fastest(variants, int8, batch)}


def reference_specs(best: dict[str, str | None], *, student_path: str | Path, folder: str | Path,
                    build: Callable[[str, Path], Path]) -> dict[str, Any]:
    """VariantSpecs of the unpruned student on each best runtime (`build(name, folder) -> artifact path`
    makes the student's artifact with the quantize stage's builder and settings); eager needs none
    (the benchmark's `student` is that measurement)."""
    specs = {}
    for role, name in best.items():
        if name is None or name == "pruned":
            continue
        if name == "pruned_compiled":
            specs[role] = VariantSpec("unpruned_compiled", str(student_path), "compiled", "distill")
            continue
        path = build(name, Path(folder))
        specs[role] = VariantSpec(f"unpruned_{name}", str(path), KIND_OF_RUNTIME[VARIANTS[name].runtime], "distill")
    return specs


def pruning_effect(variants: dict[str, Any], references: dict[str, Any], best: dict[str, str | None],
                   batch_sizes: Sequence[int]) -> dict[str, Any]:
    """Latency reduction of pruning on eager PyTorch, the best FP32 runtime and the best INT8 runtime, per
    batch size, and the realised fraction (latency reduction / MAC reduction; 1.0 = every MAC removed
    became time). `references`: the unpruned student's benchmark results per role of `best`."""
    student, pruned = variants.get("student") or {}, variants.get("pruned") or {}
    macs_before, macs_after = student.get("macs"), pruned.get("macs")
    mac_reduction = 1 - macs_after / macs_before if macs_before and macs_after else None
    pairs = {"eager": ("pruned", student, "student")}
    for role, name in best.items():
        if name == "pruned":  # eager is the best runtime: its unpruned side is the benchmark's `student`
            pairs[role] = (name, student, "student")
        elif name and references.get(role):
            pairs[role] = (name, references[role], references[role].get("name"))
    out: dict[str, Any] = {"mac_reduction": None if mac_reduction is None else sig(mac_reduction, 4), "pairs": {}}
    for role, (name, unpruned, unpruned_name) in pairs.items():
        rows = {}
        for b in map(str, batch_sizes):
            before, after = latency_of(unpruned, b), latency_of(variants.get(name), b)
            if before is None or after is None:
                continue
            cut = 1 - after / before
            rows[b] = {"unpruned_ms": before, "pruned_ms": after, "latency_reduction": sig(cut, 4),
                       "realised": sig(cut / mac_reduction, 4) if mac_reduction else None}
        out["pairs"][role] = {"variant": name, "unpruned": unpruned_name, "latency_ms": rows}
    return out
