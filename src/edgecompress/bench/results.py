"""Benchmark results read back: a measured variant's latency, the fastest of several, and which variants
are FP32 runtimes of the pruned model. Light (no torch): the benchmark's pruning figures and the
report's speedups and goals pick their references with the same code."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from edgecompress.quantize.config import fp32_runtime_variants

# the pruned model's FP32 runtimes: eager, torch.compile and the registry's FP32 exports (onnx_fp32, openvino_fp32)
FP32_RUNTIMES = ("pruned", "pruned_compiled", *fp32_runtime_variants())


def latency_of(entry: Mapping[str, Any] | None, batch: str, key: str = "median") -> float | None:
    """Per-sample latency (ms; `key`: median or iqr) of one benchmark entry at `batch`; None when the entry
    is absent, was skipped, or has no finite value there."""
    if not entry or "skipped" in entry:
        return None
    value = (entry.get("latency_ms") or {}).get(str(batch), {}).get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def fastest(variants: Mapping[str, Any], names: Iterable[str], batch: str) -> str | None:
    """The name with the lowest per-sample median latency at `batch` (skipped/unmeasured ones ignored)."""
    timed = [(lat, n) for n in names if (lat := latency_of(variants.get(n), batch)) is not None]
    return min(timed)[1] if timed else None
