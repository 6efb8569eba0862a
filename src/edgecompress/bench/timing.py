"""Timers: `time_callable` (single calls, warm-up excluded, median and IQR), `latency_sweep` (per batch
size, on real images) and `BlockTimer` (named blocks of a pipeline, CUDA events on GPU)."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import resource
import statistics
import sys
import time
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch

from edgecompress import EdgecompressError
from edgecompress.runtime import timing_device


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6


class BlockTimer:
    """Named-block timer: `with timer("preprocess"): ...` or `@timer.wrap("nms")`.

    On CUDA each block records a pair of `torch.cuda.Event(enable_timing=True)`; they are resolved
    (after one synchronize) only when `summary()` is called, so timing does not serialise the GPU
    pipeline between blocks. On CPU `time.perf_counter` is used. "cuda" without a GPU raises
    `EdgecompressError` rather than falling back (the numbers would be mislabelled).
    Peak memory: `torch.cuda.max_memory_allocated` (reset at construction) on CUDA, the process's peak
    RSS on CPU, in `summary()["_peak_memory_mb"]` and `peak_memory_mb()`.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = timing_device(device)
        self._cuda = self.device.type == "cuda"
        self._ms: dict[str, list[float]] = {}
        self._pending: list[tuple[str, Any, Any]] = []  # CUDA (name, start, end) not yet resolved
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def _block(self, name: str) -> Iterator[None]:
        # the block's name also labels its region in torch.profiler traces (cheap when not profiling)
        with torch.profiler.record_function(name), self._timed(name):
            yield

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((name, start, end))
                self._ms.setdefault(name, [])  # keeps first-seen order of the names
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._ms.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)

    def __call__(self, name: str) -> ContextManager[None]:
        """Context manager timing one execution of block `name`."""
        return self._block(name)

    def wrap(self, name: str) -> Callable:
        """Decorator timing every call of the decorated function as block `name`."""
        def decorator(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                with self._block(name):
                    return fn(*args, **kwargs)
            return timed
        return decorator

    def _resolve(self) -> None:
        if self._pending:
            torch.cuda.synchronize(self.device)
            for name, start, end in self._pending:
                self._ms[name].append(start.elapsed_time(end))
            self._pending.clear()

    def peak_memory_mb(self) -> float:
        """Peak CUDA memory allocated since construction, or this process's peak RSS on CPU."""
        return torch.cuda.max_memory_allocated(self.device) / 1e6 if self._cuda else peak_rss_mb()

    def summary(self) -> dict[str, Any]:
        """{name: {"count", "total_ms", "mean_ms", "median_ms"}} plus "_peak_memory_mb"."""
        self._resolve()
        out: dict[str, Any] = {
            name: {"count": len(ms), "total_ms": sum(ms), "mean_ms": sum(ms) / len(ms) if ms else math.nan,
                   "median_ms": statistics.median(ms) if ms else math.nan}
            for name, ms in self._ms.items()}
        out["_peak_memory_mb"] = self.peak_memory_mb()
        return out

    def table(self) -> str:
        """The summary as an aligned text table, one row per block."""
        summary = self.summary()
        rows = [(n, s) for n, s in summary.items() if not n.startswith("_")]
        width = max([len("block")] + [len(n) for n, _ in rows])
        lines = [f"{'block':<{width}}  {'count':>7}  {'total ms':>11}  {'mean ms':>10}  {'median ms':>10}"]
        lines += [f"{n:<{width}}  {s['count']:>7d}  {s['total_ms']:>11.3f}  {s['mean_ms']:>10.3f}  "
                  f"{s['median_ms']:>10.3f}" for n, s in rows]
        lines.append(f"peak memory: {summary['_peak_memory_mb']:.1f} MB "
                     f"({'CUDA allocated' if self._cuda else 'process RSS'})")
        return "\n".join(lines)


def time_callable(fn: Callable[[], Any], *, warmup: int, repeats: int, device: str = "cpu",
                  min_time_s: float = 0.0, max_repeats: int = 10_000) -> dict[str, Any]:
    """Wall time of single calls of `fn`, after `warmup` untimed calls.

    At least `repeats` calls are timed, and more (up to `max_repeats`) until `min_time_s` of timed calls
    have passed, as `timeit`'s autorange does: on a shared machine a window of a few milliseconds can
    fall entirely inside another tenant's burst. Warm-up likewise lasts at least `min_time_s / 5`.

    Garbage collection is disabled while timing (as `timeit` does) so a collection does not land in
    one sample. On CUDA each call is bracketed by events and synchronized, so the time includes the
    kernels, not just their launch.

    Returns:
        {"median_ms", "iqr_ms", "mean_ms", "min_ms", "max_ms", "repeats"} (`repeats`: calls timed).
    """
    dev = timing_device(device)
    if repeats < 1 or warmup < 0:
        raise EdgecompressError(f"time_callable: repeats={repeats} (>= 1) / warmup={warmup} (>= 0) invalid")
    cuda = dev.type == "cuda"
    warm_start, warm_calls = time.perf_counter(), 0
    while warm_calls < warmup or (time.perf_counter() - warm_start < min_time_s / 5 and warm_calls < max_repeats):
        fn()
        warm_calls += 1
        if cuda:
            torch.cuda.synchronize(dev)
    samples: list[float] = []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(samples) < repeats or (sum(samples) < min_time_s * 1e3 and len(samples) < max_repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter_ns()
                fn()
                samples.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_ms": float(median), "iqr_ms": float(q3 - q1), "mean_ms": float(np.mean(samples)),
            "min_ms": float(min(samples)), "max_ms": float(max(samples)), "repeats": len(samples)}


def take_batch(images: torch.Tensor, b: int) -> torch.Tensor:
    """The first `b` images, cycling through `images` when it holds fewer (a lone CHW image repeats)."""
    images = images.unsqueeze(0) if images.ndim == 3 else images
    reps = -(-b // len(images))
    return (images.repeat(reps, *([1] * (images.ndim - 1))) if reps > 1 else images)[:b].contiguous()


def latency_sweep(predict: Callable[[torch.Tensor], Any], sample: torch.Tensor, *, batch_sizes: Sequence[int],
                  warmup: int, repeats: int, device: str = "cpu", min_time_s: float = 0.0) -> dict[str, Any]:
    """Latency and throughput of `predict` for each batch size, on real images.

    Args:
        predict: x (B, C, H, W) -> logits.
        sample: normalised images (N, C, H, W) (or one C, H, W image); batch `b` takes the first `b`,
            cycling when N < b. Real images, not zeros: some kernels (ReLU sparsity, requantization)
            depend on the values.
        batch_sizes: each is warmed up separately (new shapes build new kernels / primitives).
    Returns:
        {"latency_ms": {"<b>": {"median", "iqr"}} per sample, "batch_latency_ms": {"<b>": {"median",
        "iqr"}} per call, "throughput": {"<b>": samples/s from the median}, "timed_calls": {"<b>": n}};
        keys are str(b) so JSON
        files and `dvc metrics diff` line up.
    """
    dev = timing_device(device)
    out: dict[str, Any] = {"latency_ms": {}, "batch_latency_ms": {}, "throughput": {}, "timed_calls": {}}
    for b in batch_sizes:
        x = take_batch(sample, int(b)).to(dev)  # built once, outside the timed region
        t = time_callable(lambda: predict(x), warmup=warmup, repeats=repeats, device=str(dev), min_time_s=min_time_s)
        key = str(b)
        out["batch_latency_ms"][key] = {"median": sig(t["median_ms"]), "iqr": sig(t["iqr_ms"])}
        out["latency_ms"][key] = {"median": sig(t["median_ms"] / b), "iqr": sig(t["iqr_ms"] / b)}
        out["throughput"][key] = sig(b / (t["median_ms"] / 1e3))
        out["timed_calls"][key] = t["repeats"]
    return out


def sig(value: float, digits: int = 6) -> float:
    """Round to significant digits: timings span ns to s, a fixed number of decimals would not fit."""
    return float(f"{value:.{digits}g}")

