"""The chain's metrics read back for the report and its plots: which variants exist, in what order,
their latencies, the speedups against the references, and the project's performance goals.

Variant families in `benchmark.json`:
- FP32 runtimes of the pruned model: `pruned` (eager), `pruned_compiled`, and the quantize variants the
  registry marks `fp32` (`onnx_fp32`);
- fully INT8 variants: those the registry marks `int8` (`ptq_*`, `qat`, `onnx_int8`; `dynamic`
  quantizes only Linear layers: not INT8 end to end, so it never counts as "the best INT8 variant");
- a skipped variant holds only `stage` and `skipped` (the reason).
Latencies are per-sample milliseconds (`latency_ms`, median and IQR over the benchmark's repeats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from edgecompress import EdgecompressError
from edgecompress.bench import contention
from edgecompress.bench.results import FP32_RUNTIMES, latency_of
from edgecompress.bench.results import fastest as fastest_variant
from edgecompress.goals import target
from edgecompress.io import read_json
from edgecompress.quantize.config import VARIANTS, fp32_runtime_variants, is_int8_variant

METRICS_FILES = ("teacher", "student_baseline", "distill", "prune", "quantize", "benchmark")
# the chain's checkpoints and the benchmark's own extras, then the quantize variants in registry order
VARIANT_ORDER = ("teacher", "student_baseline", "student", "pruned", "pruned_compiled", "pruned_fp16", *VARIANTS)


# Loading and selection
def load_metrics(metrics_dir: str | Path) -> dict[str, dict]:
    """Read every metrics file the report needs.

    Returns:
        {"teacher", "student_baseline", "distill", "prune", "quantize", "benchmark"} -> parsed JSON.
    Raises:
        EdgecompressError: naming the file that is missing or malformed.
    """
    metrics_dir = Path(metrics_dir)
    out = {name: read_json(metrics_dir / f"{name}.json") for name in METRICS_FILES}
    for name, data in out.items():
        if not isinstance(data, dict):
            raise EdgecompressError(f"{metrics_dir / f'{name}.json'}: expected a JSON object")
    if not isinstance(out["benchmark"].get("variants"), dict):
        raise EdgecompressError(f"{metrics_dir / 'benchmark.json'}: no 'variants' mapping")
    if not isinstance(out["quantize"].get("variants"), dict):
        raise EdgecompressError(f"{metrics_dir / 'quantize.json'}: no 'variants' mapping")
    return out


def ordered_variants(bench: dict) -> list[str]:
    """Variant names of `bench`, in pipeline order (unknown names last, in file order)."""
    names = list(bench["variants"])
    return [n for n in VARIANT_ORDER if n in names] + [n for n in names if n not in VARIANT_ORDER]


def measured_entry(bench: dict, name: str) -> dict | None:
    """The variant's benchmark entry, or None when it is absent or was skipped."""
    entry = bench["variants"].get(name)
    return None if entry is None or "skipped" in entry else entry


def latency(bench: dict, name: str | None, batch: str, key: str = "median") -> float | None:
    """Per-sample latency (ms; `key`: median or iqr) of a measured variant at `batch`, else None."""
    return latency_of(bench["variants"].get(name), batch, key) if name else None


def fastest(bench: dict, names: Iterable[str], batch: str) -> str | None:
    """The name with the lowest per-sample median latency at `batch` (skipped/unmeasured ones ignored)."""
    return fastest_variant(bench["variants"], names, batch)


def ratio(reference: float | None, value: float | None) -> float | None:
    """reference / value (> 1: value is smaller), None when either is missing."""
    if reference is None or value is None or value <= 0:
        return None
    return reference / value


def batch_keys(bench: dict) -> tuple[str, str]:
    """The smallest and largest benchmarked batch sizes as keys (normally "1" and "16")."""
    sizes = bench.get("config", {}).get("batch_sizes") or [1, 16]
    return str(min(sizes)), str(max(sizes))


# Derived numbers
def speedups(bench: dict, batch: str = "8") -> dict:
    """Per-sample latency speedups at one batch size, for every measured variant.

    Returns:
        {variant: {"latency_ms", "vs_pruned_eager", "vs_best_fp32", "best_fp32", "vs_teacher"}}: a speedup is
        reference latency / variant latency (> 1 = faster); the best FP32 runtime is the fastest of
        pruned, pruned_compiled and onnx_fp32 at that batch. A speedup whose reference was not measured
        is None. Skipped variants (and ones without a latency at `batch`) are left out.
    """
    batch = str(batch)
    best = fastest(bench, FP32_RUNTIMES, batch)
    refs = {"vs_pruned_eager": latency(bench, "pruned", batch),
            "vs_best_fp32": latency(bench, best, batch) if best else None,
            "vs_teacher": latency(bench, "teacher", batch)}
    out = {}
    for name in ordered_variants(bench):
        lat = latency(bench, name, batch)
        if lat is None:
            continue
        out[name] = {"latency_ms": lat, **{k: ratio(ref, lat) for k, ref in refs.items()}, "best_fp32": best}
    return out


def same_runtime_speedups(sp: dict) -> list[tuple[str, str, float]]:
    """(INT8 variant, the FP32 variant of the same runtime, FP32 latency / INT8 latency) for each pair in
    `speedups`' output: e.g. whether ONNX Runtime INT8 beats ONNX Runtime FP32 at all."""
    return [(n, f, sp[f]["latency_ms"] / sp[n]["latency_ms"]) for n in sp for f in sp
            if is_int8_variant(n) and f in fp32_runtime_variants() and VARIANTS[f].runtime == VARIANTS[n].runtime]


def gate_note(qvars: dict) -> str:
    """The quality gate's sentence: each INT8 variant's drop on the validation split, the layers the
    fallback kept in float and what they cost in latency."""
    gated = {n: e["gate"] for n, e in qvars.items() if "gate" in e}
    budget = next(iter(gated.values()))["budget_points"]

    def one(name: str, g: dict) -> str:
        text = f"`{name}` {g['val_drop_points']:+.2f}"
        if g["float_layers"]:
            cost = g.get("latency_ms", {})
            text += (f" with {len(g['float_layers'])} float layer(s) ({', '.join(g['float_layers'])}; "
                     f"{cost.get('with_float_layers', '?')} vs {cost.get('all_int8', '?')} ms/sample all-INT8)")
        return text + ("" if g["met"] else " — over budget")

    return (f"Quality gate, drop in points on the validation split (budget: {budget}): "
            + "; ".join(one(n, g) for n, g in gated.items()) + ".")


def _goal(value: float | None, goal: str, variant: str | None, reference: str | None, **bound: float) -> dict:
    entry = {"value": None, "goal": goal, "met": False} if value is None else target(value, goal=goal, **bound)
    return {**entry, "variant": variant, "reference": reference}


def performance_goals(bench: dict) -> dict:
    """The project's latency/size/accuracy goals for the final chain, from `benchmark.json`.

    The final chain is the best INT8 variant: the lowest batch-8 per-sample latency among ptq_*, qat and
    onnx_int8. Each entry is goals.target()'s {"value", "goal", "met"} plus "variant" (the INT8 variant
    used) and "reference" (what it is compared with); when a side was not measured, value is None and
    met is False.
    """
    b = "8"
    best = fastest(bench, [n for n in bench["variants"] if is_int8_variant(n)], b)
    fp32 = fastest(bench, FP32_RUNTIMES, b)
    lat = latency(bench, best, b) if best else None
    final = measured_entry(bench, best) if best else None
    teacher = measured_entry(bench, "teacher")

    def field(entry: dict | None, key: str) -> float | None:
        return None if entry is None or entry.get(key) is None else float(entry[key])

    realised = ((bench.get("pruning") or {}).get("pairs") or {}).get("best_fp32") or {}
    realised_b8 = (realised.get("latency_ms") or {}).get(b, {}).get("realised")
    acc_loss = None
    if field(teacher, "accuracy") is not None and field(final, "accuracy") is not None:
        acc_loss = 100 * (field(teacher, "accuracy") - field(final, "accuracy"))
    return {
        "int8_speedup_vs_pruned_eager": _goal(
            ratio(latency(bench, "pruned", b), lat), ">= 3x lower latency than eager FP32 pruned (batch 8)",
            best, "pruned", at_least=3.0),
        "int8_speedup_vs_best_fp32": _goal(
            ratio(latency(bench, fp32, b) if fp32 else None, lat),
            f">= 1.5x lower latency than the best FP32 runtime ({fp32 or 'none measured'}, batch 8)",
            best, fp32, at_least=1.5),
        "final_speedup_vs_teacher": _goal(
            ratio(latency(bench, "teacher", b), lat), ">= 8x lower latency than the teacher (batch 8)",
            best, "teacher", at_least=8.0),
        "final_size_reduction_vs_teacher": _goal(
            ratio(field(teacher, "size_mb"), field(final, "size_mb")), ">= 10x smaller than the teacher (size_mb)",
            best, "teacher", at_least=10.0),
        "final_accuracy_loss_points": _goal(
            acc_loss, "<= 1.5 points of accuracy lost vs the teacher", best, "teacher", at_most=1.5),
        "pruning_realised_fraction": _goal(
            realised_b8, ">= 0.7 of pruning's MAC reduction realised as latency reduction on the best FP32 "
            f"runtime ({realised.get('variant') or 'none measured'}, batch 8)", realised.get("variant"),
            realised.get("unpruned"), at_least=0.7),
    }


def contention_lines(bench: dict, notes: list[str]) -> list[str]:
    """Which variants were measured while other processes took the CPU (bench.max_load), with how much."""
    flagged = [(n, bench["variants"][n]["load"]) for n in bench.get("contended", []) if n in bench["variants"]]
    return contention.contention_lines(flagged, bench.get("config", {}).get("max_load"), setting="bench.max_load",
                                       what="variant", notes=notes)
