"""INT8 against the fastest FP32 runtime, read from zoo_quantize's metrics (no model is run here): which
FP32 runtime is fastest at each batch size, which INT8 variant is "the best", and the issue #15
targets checked on it. Kept apart from the measuring code so the report stage depends on this alone."""

from __future__ import annotations

from typing import Any

from edgecompress.goals import target

FP32_RUNTIMES = ("eager", "compiled", "onnx_fp32", "openvino_fp32")  # the best-FP32 reference's candidates
INT8_RUNTIMES = ("onnx_int8", "openvino_int8")
TOP1_DROP_POINTS = 1.0  # the best INT8 variant: top-1 within this of FP32 ...
AGREEMENT = 0.95  # ... the same top-1 class as FP32 on this share of the images ...
SPEEDUP = {"8": 1.5, "1": 1.3}  # ... and this much faster than the fastest FP32 runtime, per batch size


def ms(entry: dict[str, Any] | None, batch: int | str) -> float | None:
    """Per-image median latency of a measured entry at `batch`, None when absent or skipped."""
    if not entry or "skipped" in entry:
        return None
    return (entry.get("latency_ms", {}).get(str(batch)) or {}).get("median")


def candidates(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every measured variant of one model (zoo_quantize's entry) by name: `eager` (FP32, re-timed in
    zoo_quantize), the other runtimes, and the FX static INT8 configs as `fx_<config>`."""
    out = {"eager": model.get("fp32")}
    out.update(model.get("runtimes", {}))
    out.update({f"fx_{name}": entry for name, entry in model.get("static", {}).items()})
    return {name: entry for name, entry in out.items() if entry and "skipped" not in entry}


def drop_points(fp32_top1: float, top1: float) -> float:
    """Top-1 lost, in percentage points, rounded so that 0.85 - 0.84 is 1.0 and not 1.0000000000000009."""
    return round(100 * (fp32_top1 - top1), 6)


def is_int8(name: str) -> bool:
    return name in INT8_RUNTIMES or name.startswith("fx_")


def best_fp32(model: dict[str, Any], batch: int | str) -> tuple[str | None, float | None]:
    """The fastest FP32 runtime at `batch` and its latency."""
    timed = [(t, name) for name, entry in candidates(model).items()
             if name in FP32_RUNTIMES and (t := ms(entry, batch)) is not None]
    return (min(timed)[1], min(timed)[0]) if timed else (None, None)


def best_int8(model: dict[str, Any], fp32_top1: float, batch: int | str) -> str | None:
    """The fastest INT8 variant at `batch` among those within the accuracy targets; when none is, the
    one that agrees most with FP32 (its misses are then reported)."""
    int8 = {n: e for n, e in candidates(model).items() if is_int8(n) and ms(e, batch) is not None}
    accurate = [n for n, e in int8.items() if drop_points(fp32_top1, e["top1"]) <= TOP1_DROP_POINTS
                and e.get("top1_agreement", 0) >= AGREEMENT]
    if accurate:
        return min(accurate, key=lambda n: ms(int8[n], batch))
    return max(int8, key=lambda n: int8[n].get("top1_agreement", 0)) if int8 else None


def int8_goals(arch: str, fp32_top1: float, model: dict[str, Any], batches: list[int]) -> dict[str, dict[str, Any]]:
    """The targets for one model with real weights, on its best INT8 variant at the largest batch."""
    big = str(max(batches))
    best = best_int8(model, fp32_top1, big)
    if best is None:
        return {}
    entry = candidates(model)[best]
    goals = {f"{arch}: {best} top-1 drop vs FP32": {**target(
                 drop_points(fp32_top1, entry["top1"]), at_most=TOP1_DROP_POINTS,
                 goal=f"<= {TOP1_DROP_POINTS:g} point"), "unit": "points"},
             f"{arch}: {best} top-1 agreement with FP32": {**target(
                 100 * entry.get("top1_agreement", 0), at_least=100 * AGREEMENT, goal=f">= {100 * AGREEMENT:g}%"),
                 "unit": "%"}}
    for batch, factor in SPEEDUP.items():
        reference, reference_ms = best_fp32(model, batch)
        int8_ms = ms(entry, batch)
        if reference is None or int8_ms is None:
            continue
        goals[f"{arch}: {best} vs fastest FP32 ({reference}) at batch {batch}"] = {**target(
            reference_ms / int8_ms, at_least=factor, goal=f">= {factor:g}x faster"), "unit": "×"}
    return goals
