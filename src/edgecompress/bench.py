"""Measurement library of the `benchmark` stage: latency, throughput, memory, roofline, op profiles.

Methodology (as in airbench and Torch-Pruning's `measure_latency`): warm-up iterations are run and
discarded (allocator, oneDNN primitive caches and lazy re-packing settle there), the thread count is
pinned for every variant, every timed call is recorded and summarised by its median and inter-quartile
range (robust to the scheduler noise of a shared CPU), CUDA timings use events with a synchronize, and
the environment is recorded next to the numbers. Each variant can run in a fresh subprocess
(`benchmark_variant_isolated`) so that its peak RSS is its own and no variant warms caches for the next.

Run as `python -m edgecompress.bench '<json>'` this module benchmarks one variant and prints the
result as JSON on the last stdout line (the isolated runner uses it).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from edgecompress import EdgecompressError, first_line
from edgecompress.io import atomic_path, publish, write_text

log = logging.getLogger(__name__)

KINDS = ("checkpoint", "torchscript", "onnx", "compiled", "half")
DEVICES = ("cpu", "cuda")
# torch.ao INT8 kernels (fbgemm/x86/qnnpack) and the ONNX Runtime CPU provider run on the CPU only
CPU_ONLY_REASON = ("CPU-only artifact ({what}); set bench.device: cpu to measure it, "
                   "on CUDA the FP16 counterpart is pruned_fp16")


class CompileUnavailable(EdgecompressError):
    """torch.compile failed here (e.g. no C++ compiler for inductor): the stage skips the variant."""


# ----------------------------------------------------------------------------------------------
# Configuration
@dataclass(frozen=True)
class BenchConfig:
    """`bench` block of params.yaml; validated on construction (one-line errors naming the key)."""

    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    warmup: int = 10
    repeats: int = 30
    min_time_s: float = 0.5  # timed calls go on past `repeats` until this long: a short window is at the mercy of one hiccup
    threads: int = 1
    profile: bool = False
    compile: bool = True
    isolate: bool = True
    device: str = "cpu"  # where variants run and are timed: cpu (the edge CPU) | cuda (an edge/server GPU)

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> EdgecompressError:
            value = getattr(self, key)
            value = list(value) if isinstance(value, tuple) else value  # as written in params.yaml
            return EdgecompressError(f"bench.{key}={value!r} is invalid: {allowed}")

        def is_int(v: Any, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        sizes = self.batch_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
            raise bad("batch_sizes", "a non-empty list of distinct integers >= 1")
        sizes = tuple(sizes)
        if not sizes or len(set(sizes)) != len(sizes) or not all(is_int(b, 1) for b in sizes):
            raise bad("batch_sizes", "a non-empty list of distinct integers >= 1")  # distinct: keys of the result
        object.__setattr__(self, "batch_sizes", sizes)  # YAML gives lists
        for key, low in (("warmup", 0), ("repeats", 3), ("threads", 1)):  # IQR needs >= 3 samples
            if not is_int(getattr(self, key), low):
                raise bad(key, f"an integer >= {low}")
        if isinstance(self.min_time_s, bool) or not isinstance(self.min_time_s, (int, float)) \
                or not 0 <= self.min_time_s <= 60:
            raise bad("min_time_s", "a number of seconds in [0, 60]")
        for key in ("profile", "compile", "isolate"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        if self.device not in DEVICES:
            raise bad("device", " or ".join(DEVICES))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for JSON/YAML output."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# Timers
def _check_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # An error, not a silent CPU fallback: numbers labelled "cuda" must come from a GPU.
        raise EdgecompressError(f"device='{device}' requested for timing but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise EdgecompressError(f"device='{device}' is invalid: cpu or cuda")
    return device


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
        self.device = _check_device(device)
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
    dev = _check_device(device)
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


def _take_batch(images: torch.Tensor, b: int) -> torch.Tensor:
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
    dev = _check_device(device)
    out: dict[str, Any] = {"latency_ms": {}, "batch_latency_ms": {}, "throughput": {}, "timed_calls": {}}
    for b in batch_sizes:
        x = _take_batch(sample, int(b)).to(dev)  # built once, outside the timed region
        t = time_callable(lambda: predict(x), warmup=warmup, repeats=repeats, device=str(dev), min_time_s=min_time_s)
        key = str(b)
        out["batch_latency_ms"][key] = {"median": _sig(t["median_ms"]), "iqr": _sig(t["iqr_ms"])}
        out["latency_ms"][key] = {"median": _sig(t["median_ms"] / b), "iqr": _sig(t["iqr_ms"] / b)}
        out["throughput"][key] = _sig(b / (t["median_ms"] / 1e3))
        out["timed_calls"][key] = t["repeats"]
    return out


def _sig(value: float, digits: int = 6) -> float:
    """Round to significant digits: timings span ns to s, a fixed number of decimals would not fit."""
    return float(f"{value:.{digits}g}")


# ----------------------------------------------------------------------------------------------
# Environment and roofline
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def gemm_roofline(*, threads: int, size: int = 1024, repeats: int = 10, device: str = "cpu") -> dict[str, Any]:
    """Measured GEMM throughput (GMAC/s = size^3 / median time): the practical compute ceiling.

    On CUDA (`device="cuda"`, size 4096) FP32 (TF32 off, as the eager models run by default) and FP16
    `torch.mm` are timed with CUDA events, and INT8 with `torch._int_mm`.

    FP32: `torch.mm`. INT8: both `torch._int_mm` (int8 x int8 -> int32) and `quantized::linear` with
    a packed qint8 weight on the x86 engine (the kernel the FX INT8 models run) are tried; the faster
    one is reported as `int8_gmacs`/`int8_method`, each one's figure in `int8_methods`; None when
    neither works in this build.
    """
    if _check_device(device).type == "cuda":
        return _cuda_gemm_roofline(torch.device(device), size=max(size, 4096), repeats=repeats)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    macs = float(size) ** 3

    def gmacs(fn: Callable[[], Any]) -> float:
        return macs / (time_callable(fn, warmup=2, repeats=repeats)["median_ms"] / 1e3) / 1e9

    methods: dict[str, float] = {}
    with _threads(threads), torch.inference_mode():
        fp32 = gmacs(lambda: torch.mm(a, b))
        with contextlib.suppress(Exception):  # absent/unsupported on this CPU build
            ai = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen)
            bi = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen)
            torch._int_mm(ai, bi)
            methods["torch._int_mm"] = gmacs(lambda: torch._int_mm(ai, bi))
        previous = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = "x86"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quantized tensor creation deprecation notice
                qa = torch.quantize_per_tensor(a, 0.05, 128, torch.quint8)
                packed = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(b, 0.05, 0, torch.qint8), None)
            torch.ops.quantized.linear(qa, packed, 1.0, 0)
            methods["quantized.linear (x86)"] = gmacs(lambda: torch.ops.quantized.linear(qa, packed, 1.0, 0))
        except Exception:  # noqa: BLE001 - engine or op missing: INT8 stays None
            pass
        finally:
            torch.backends.quantized.engine = previous
    best = max(methods, key=methods.get) if methods else None
    return {"fp32_gmacs": round(fp32, 3), "int8_gmacs": round(methods[best], 3) if best else None,
            "int8_method": best, "int8_methods": {k: round(v, 3) for k, v in methods.items()},
            "size": size, "threads": threads}


def _cuda_gemm_roofline(device: torch.device, *, size: int, repeats: int) -> dict[str, Any]:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device)
    b = torch.randn(size, size, generator=gen, device=device)
    macs = float(size) ** 3

    def gmacs(fn: Callable[[], Any]) -> float:
        return macs / (time_callable(fn, warmup=3, repeats=repeats, device=str(device))["median_ms"] / 1e3) / 1e9

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            fp32 = gmacs(lambda: torch.mm(a, b))
            ah, bh = a.half(), b.half()
            fp16 = gmacs(lambda: torch.mm(ah, bh))
            methods: dict[str, float] = {}
            with contextlib.suppress(Exception):  # shape/arch restrictions of the int8 GEMM
                ai = torch.randint(-128, 128, (size, size), dtype=torch.int8, device=device, generator=gen)
                bi = torch.randint(-128, 128, (size, size), dtype=torch.int8, device=device, generator=gen)
                methods["torch._int_mm (cuda)"] = gmacs(lambda: torch._int_mm(ai, bi))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    best = next(iter(methods), None)
    return {"fp32_gmacs": round(fp32, 3), "fp16_gmacs": round(fp16, 3),
            "int8_gmacs": round(methods[best], 3) if best else None, "int8_method": best,
            "int8_methods": {k: round(v, 3) for k, v in methods.items()}, "size": size, "threads": None,
            "device": torch.cuda.get_device_name(device)}


def achieved_fraction(macs: int, latency_ms_per_sample: float, roofline_gmacs: float) -> float:
    """Fraction of the measured GEMM roofline a model reaches: (MACs / latency) / roofline."""
    if latency_ms_per_sample <= 0 or roofline_gmacs <= 0:
        raise EdgecompressError("achieved_fraction: latency and roofline must be > 0")
    return (macs / (latency_ms_per_sample / 1e3)) / (roofline_gmacs * 1e9)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_fingerprint(threads: int, device: str = "cpu") -> dict[str, Any]:
    """Hardware and software the numbers were measured with (recorded next to them)."""
    def version(module: str) -> str | None:
        with contextlib.suppress(Exception):
            return __import__(module).__version__
        return None

    cuda = None
    if torch.cuda.is_available():
        cuda = {"version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0)}
    return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torchvision": version("torchvision"), "onnxruntime": version("onnxruntime"),
            "quantized_engine": torch.backends.quantized.engine,
            "quantized_engines": list(torch.backends.quantized.supported_engines),
            "cuda": cuda, "device": device}


# ----------------------------------------------------------------------------------------------
# Op profiles
def profile_ops(predict: Callable[[torch.Tensor], Any], inputs: torch.Tensor, out_dir: str | Path, name: str,
                *, top: int = 25, warmup: int = 3, iterations: int = 5) -> dict[str, Any]:
    """Per-op time of `predict` on `inputs`: `<name>_ops.txt` (op table) + `<name>_trace.json` (Chrome
    trace), both written atomically. Torch callables go through `torch.profiler` (+ CUDA activity on
    GPU); ONNX Runtime predictors (`_OrtPredict`, invisible to the torch profiler) through ORT's own
    profiler, whose per-node kernel times are aggregated by op type into the same kind of table.

    Returns:
        {"table", "trace", "source", "iterations", "top_ops": first 5 [{"name", "self_cpu_ms", "calls"}]}
        with times and calls per inference (averaged over `iterations`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path, trace_path = out_dir / f"{name}_ops.txt", out_dir / f"{name}_trace.json"
    if isinstance(predict, _OrtPredict):
        return _profile_ort(predict, inputs, table_path, trace_path, top=top, warmup=warmup, iterations=iterations)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if inputs.is_cuda else [])
    for _ in range(warmup):
        predict(inputs)
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(iterations):
            predict(inputs)
        if inputs.is_cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    sort_by = "self_cuda_time_total" if inputs.is_cuda else "self_cpu_time_total"  # where the time goes
    write_text(table_path, averages.table(sort_by=sort_by, row_limit=top) + "\n")
    with atomic_path(trace_path) as tmp:
        prof.export_chrome_trace(tmp)
    ranked = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
    top_ops = [{"name": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / iterations, 5),
                "calls": e.count / iterations} for e in ranked]
    if inputs.is_cuda:
        device_ranked = sorted(averages, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:5]
        top_ops += [{"name": e.key, "self_cuda_ms": round(e.self_device_time_total / 1e3 / iterations, 5),
                     "calls": e.count / iterations} for e in device_ranked]
    return {"table": str(table_path), "trace": str(trace_path), "source": "torch.profiler",
            "iterations": iterations, "top_ops": top_ops}


def _profile_ort(predict: _OrtPredict, inputs: torch.Tensor, table_path: Path, trace_path: Path, *, top: int,
                 warmup: int, iterations: int) -> dict[str, Any]:
    """ORT profiling on a separate session of the same model/threads; warm-up runs are dropped."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = predict.threads
    options.enable_profiling = True
    options.profile_file_prefix = str(table_path.parent / f".{table_path.stem}_ort")
    session = ort.InferenceSession(predict.path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: inputs.float().contiguous().numpy()}
    for _ in range(warmup + iterations):
        session.run(None, feed)
    raw = session.end_profiling()
    try:
        events = json.loads(Path(raw).read_text())
        publish(raw, trace_path)  # ORT writes Chrome-trace JSON; renamed whole, so atomic
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(raw)
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    timed = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
    ops: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                and any(lo <= e["ts"] <= hi for lo, hi in timed):
            entry = ops.setdefault(e.get("args", {}).get("op_name", "?"), [0.0, 0])
            entry[0] += e["dur"] / 1e3
            entry[1] += 1
    n = max(len(timed), 1)
    ranked = sorted(ops.items(), key=lambda kv: kv[1][0], reverse=True)
    total = sum(v[0] for v in ops.values()) or 1.0
    lines = [f"ONNX Runtime per-op kernel time, mean of {n} runs after {warmup} warm-up",
             f"{'op':<28}{'self ms/run':>14}{'%':>8}{'calls/run':>11}"]
    lines += [f"{k:<28}{v[0] / n:>14.4f}{100 * v[0] / total:>8.1f}{v[1] / n:>11.1f}" for k, v in ranked[:top]]
    write_text(table_path, "\n".join(lines) + "\n")
    top_ops = [{"name": k, "self_cpu_ms": round(v[0] / n, 5), "calls": v[1] / n} for k, v in ranked[:5]]
    return {"table": str(table_path), "trace": str(trace_path), "source": "onnxruntime profiler",
            "iterations": n, "top_ops": top_ops}


# ----------------------------------------------------------------------------------------------
# Variants
@dataclass(frozen=True)
class VariantSpec:
    """One artifact to benchmark."""

    name: str   # e.g. "teacher", "pruned", "ptq_x86", "onnx_int8", "pruned_compiled"
    path: str   # artifact on disk
    kind: str   # "checkpoint" | "torchscript" | "onnx" | "compiled" (checkpoint + torch.compile) | "half" (checkpoint in fp16)
    stage: str  # producing stage, for the report

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgecompressError(f"variant {self.name}: kind={self.kind!r} is invalid: {', '.join(KINDS)}")


class _OrtPredict:
    """ONNX Runtime predictor that remembers its model path and threads (for ORT profiling)."""

    def __init__(self, path: str, threads: int) -> None:
        from edgecompress.quantize import OnnxClassifier

        self.path, self.threads = path, threads
        self.runner = OnnxClassifier(path, threads=threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


class _AsModule(nn.Module):
    """Lets `train.evaluate` (which calls model.eval() and model(x)) drive any predict callable, so
    accuracy is computed by the very code the producing stages used."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.predict = predict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)


def load_predict(spec: VariantSpec, *, threads: int, example: torch.Tensor | None = None,
                 batch_sizes: Sequence[int] = (1,), device: str = "cpu",
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Load a variant as predict(x) -> logits (no autograd) with `threads` intra-op threads.

    On `device="cuda"` checkpoint, compiled and half kinds are moved to the GPU and take inputs that
    are already there (the timed region holds the model, not the host-to-device copy); "half" runs the
    weights and activations in float16 and returns float32 logits. TorchScript INT8 and ONNX artifacts
    are CPU-only and raise.

    Args:
        example: real images; for "compiled", one call per batch size in `batch_sizes` is made here so
            that every compilation (the first shape, then the dynamic-shape recompile) happens now and
            its time is reported as `compile_s` instead of polluting the latency warm-up.
    Returns:
        (predict, {"format", "compile_s" (compiled only; None when `example` is None)}).
    Raises:
        EdgecompressError: unreadable artifact; CompileUnavailable when torch.compile fails.
    """
    torch.set_num_threads(threads)
    dev = _check_device(device)
    if not Path(spec.path).is_file():
        raise EdgecompressError(f"{spec.path}: artifact of variant {spec.name} not found (run stage {spec.stage})")
    if dev.type != "cpu" and spec.kind in ("onnx", "torchscript"):
        raise EdgecompressError(f"variant {spec.name}: " + CPU_ONLY_REASON.format(what=spec.kind))
    if spec.kind == "onnx":
        return _OrtPredict(spec.path, threads), {"format": "onnx (onnxruntime CPUExecutionProvider)"}
    if spec.kind == "torchscript":
        from edgecompress.quantize import load_torchscript

        module = load_torchscript(spec.path).eval()
        info = {"format": f"torchscript (quantized engine {torch.backends.quantized.engine})"}
    else:
        from edgecompress.models import load_checkpoint

        module, _ = load_checkpoint(spec.path)
        module = module.to(dev).eval()
        info = {"format": f"pytorch eager fp32 ({dev.type})"}
    if spec.kind == "half":
        module = module.half()
        info = {"format": f"pytorch eager fp16 ({dev.type})"}

        def predict_half(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x.half()).float()
        return predict_half, info
    if spec.kind != "compiled":
        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x)
        return predict, info

    compiled = torch.compile(module)

    def predict_compiled(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # dynamo guards on grad mode; no_grad is its best-supported inference mode
            return compiled(x)

    info = {"format": f"torch.compile (inductor) fp32 ({dev.type})", "compile_s": None}
    if example is not None:
        start = time.perf_counter()
        try:
            for b in batch_sizes:
                predict_compiled(_take_batch(example, int(b)).to(dev))
        except Exception as exc:  # noqa: BLE001 - inductor raises many types (missing compiler, ...)
            raise CompileUnavailable(f"variant {spec.name}: torch.compile failed ({first_line(exc)})") from None
        info["compile_s"] = round(time.perf_counter() - start, 3)
    return predict_compiled, info


def _test_images(prepared_dir: str | Path, meta: dict, count: int) -> torch.Tensor:
    from edgecompress.data import load_split, normalize_transform

    images, _ = load_split(prepared_dir, "test")
    return normalize_transform(meta)(images[:count].float().div_(255.0)).contiguous()  # as make_loader does


def benchmark_variant(spec: VariantSpec, *, prepared_dir: str | Path, config: BenchConfig,
                      profile_dir: str | Path | None = None, eval_batch_size: int | None = None) -> dict[str, Any]:
    """Benchmark one variant in this process (CPU): accuracy, size, latency sweep, peak RSS, profile.

    Accuracy is `train.evaluate` on the full test split with the evaluation batch size the producing
    stages use (`pipeline.EVAL_BATCH_SIZE` unless `eval_batch_size` is given), so it equals what they
    reported. Params/MACs are
    counted for checkpoint/compiled kinds and None for TorchScript/ONNX (the stage fills them from the
    source model).
    """
    from edgecompress.data import load_meta, make_loader
    from edgecompress.train import evaluate

    if eval_batch_size is None:
        from edgecompress.pipeline import EVAL_BATCH_SIZE as eval_batch_size  # lazy: pipeline may import bench

    torch.set_num_threads(config.threads)
    device = _check_device(config.device)
    meta = load_meta(prepared_dir)
    images = _test_images(prepared_dir, meta, max(config.batch_sizes)).to(device)
    predict, info = load_predict(spec, threads=config.threads, example=images, batch_sizes=config.batch_sizes,
                                 device=config.device)
    loader = make_loader(prepared_dir, "test", batch_size=eval_batch_size, train=False, seed=0)
    accuracy = evaluate(_AsModule(predict), loader, num_classes=meta["num_classes"], device=device)["accuracy"]
    params = macs = None
    if spec.kind in ("checkpoint", "compiled", "half"):
        from edgecompress.models import count_macs, count_params, load_checkpoint

        model, _ = load_checkpoint(spec.path)  # a fresh eager copy: the op counter must not trace the compiled one
        params, macs = count_params(model), count_macs(model, tuple(images.shape[1:]))
        del model
    sweep = latency_sweep(predict, images, batch_sizes=config.batch_sizes, warmup=config.warmup,
                          repeats=config.repeats, min_time_s=config.min_time_s, device=config.device)
    result: dict[str, Any] = {
        "name": spec.name, "stage": spec.stage, "kind": spec.kind, "format": info["format"],
        "artifact": str(spec.path), "accuracy": accuracy, "params": params, "macs": macs,
        "size_mb": round(os.path.getsize(spec.path) / 1e6, 4), **sweep, "threads": config.threads}
    if "compile_s" in info:
        result["compile_s"] = info["compile_s"]
    if config.profile and profile_dir is not None:
        result["profile"] = profile_ops(predict, _take_batch(images, config.batch_sizes[0]), profile_dir, spec.name)
    result["peak_rss_mb"] = round(peak_rss_mb(), 2)  # last: covers load, evaluation, timing and profiling
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 1e6, 2)
        result["device"] = torch.cuda.get_device_name(device)
    return result


def benchmark_variant_isolated(spec: VariantSpec, *, prepared_dir: str | Path, config: BenchConfig,
                               profile_dir: str | Path | None = None, timeout_s: int = 600) -> dict[str, Any]:
    """`benchmark_variant` in a fresh `python -m edgecompress.bench` process: peak RSS is this variant's
    own, and no allocator, kernel cache or page cache state is inherited from another variant.
    OMP/MKL thread variables are pinned to `config.threads` before torch starts in the child.

    Raises:
        EdgecompressError: with the child's last stderr line when it fails or times out.
    """
    payload = json.dumps({"spec": asdict(spec), "prepared_dir": str(prepared_dir), "config": config.to_dict(),
                          "profile_dir": None if profile_dir is None else str(profile_dir)})
    env = dict(os.environ, OMP_NUM_THREADS=str(config.threads), MKL_NUM_THREADS=str(config.threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgecompress.bench", payload], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise EdgecompressError(f"benchmark of {spec.name} timed out after {timeout_s} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = errors[-1].strip() if errors else f"exit status {proc.returncode}, no output"
        raise EdgecompressError(f"benchmark of {spec.name} failed in its subprocess: {last.removeprefix('error: ')}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise EdgecompressError(f"benchmark of {spec.name}: subprocess printed no JSON result") from None


# ----------------------------------------------------------------------------------------------
# The whole chain
CHAIN_CHECKPOINTS = (("teacher", "teacher.pt", "teacher"), ("student_baseline", "student_baseline.pt", "student_baseline"),
                     ("student", "student.pt", "distill"), ("pruned", "pruned.pt", "prune"))


def is_int8_variant(name: str) -> bool:
    """Variants whose every conv/linear runs in INT8 (dynamic quantization is INT8 on Linear only)."""
    return name.startswith("ptq_") or name in ("qat", "onnx_int8")


def chain_variants(*, models_dir: str | Path, quantized_dir: str | Path, quantize_metrics: dict[str, Any],
                   compile: bool, device: str = "cpu") -> tuple[list[VariantSpec], dict[str, dict[str, Any]]]:
    """Every variant of the chain as a spec to load from disk, plus the ones skipped upstream.

    On `device="cuda"` the quantize stage's artifacts (INT8 TorchScript for the CPU engines, ONNX for
    ORT's CPU provider, the CPU-built fp16 wrapper) are listed as skipped with the reason, and
    `pruned_fp16` (the pruned checkpoint in float16 on the GPU) is measured instead.

    Returns:
        (specs in chain order, {name: {"stage", "skipped": reason}} for quantize variants that were
        skipped, e.g. an engine this CPU lacks).
    """
    models_dir, quantized_dir = Path(models_dir), Path(quantized_dir)
    specs = [VariantSpec(name, str(models_dir / file), "checkpoint", stage) for name, file, stage in CHAIN_CHECKPOINTS]
    if compile:
        specs.append(VariantSpec("pruned_compiled", str(models_dir / "pruned.pt"), "compiled", "prune"))
    cuda = torch.device(device).type == "cuda"  # a listing only: availability is checked where it runs
    if cuda:
        specs.append(VariantSpec("pruned_fp16", str(models_dir / "pruned.pt"), "half", "prune"))
    skipped: dict[str, dict[str, Any]] = {}
    for name, entry in quantize_metrics["variants"].items():
        if name == "fp32":  # the pruned model itself, already measured as `pruned`
            continue
        if "skipped" in entry:
            skipped[name] = {"stage": "quantize", "skipped": entry["skipped"]}
            continue
        kind = "onnx" if entry["artifact"].endswith(".onnx") else "torchscript"
        if cuda:
            skipped[name] = {"stage": "quantize", "skipped": CPU_ONLY_REASON.format(what=kind)}
            continue
        specs.append(VariantSpec(name, str(quantized_dir / entry["artifact"]), kind, "quantize"))
    return specs, skipped


def run_benchmark(specs: Sequence[VariantSpec], skipped: dict[str, dict[str, Any]], *, prepared_dir: str | Path,
                  config: BenchConfig, profile_dir: str | Path | None = None) -> dict[str, Any]:
    """Benchmark every spec (each in its own process when `config.isolate`) against a roofline measured
    in the same run; the result is `metrics/benchmark.json`.

    Quantized artifacts carry no op counter, so they get params/MACs of the model they were made from
    (`pruned`): the work per image is the same, done in another precision.
    """
    from tqdm.auto import tqdm

    if config.device == "cuda" and not torch.cuda.is_available():
        raise EdgecompressError("bench.device='cuda' but no CUDA device is available here: use bench.device: cpu")
    roofline = gemm_roofline(threads=config.threads, device=config.device)
    log.info("roofline (%d threads): FP32 GEMM %.1f GMAC/s, INT8 %s GMAC/s (%s)", config.threads,
             roofline["fp32_gmacs"], roofline["int8_gmacs"], roofline["int8_method"])
    variants: dict[str, Any] = {}
    measure = benchmark_variant_isolated if config.isolate else benchmark_variant
    with tqdm(total=len(specs) * len(config.batch_sizes), desc="benchmark", unit="variant x batch",
              disable=None) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.name)
            try:
                result = measure(spec, prepared_dir=prepared_dir, config=config, profile_dir=profile_dir)
            except CompileUnavailable as exc:
                log.warning("%s skipped: %s", spec.name, exc)
                variants[spec.name] = {"stage": spec.stage, "skipped": str(exc)}
                bar.update(len(config.batch_sizes))
                continue
            result["accuracy"] = round(result["accuracy"], 6)
            variants[spec.name] = result
            bar.update(len(config.batch_sizes))
    reference = variants.get("pruned", {})
    for name, result in variants.items():
        if "skipped" in result:
            continue
        if result.get("macs") is None:
            result["params"], result["macs"] = reference.get("params"), reference.get("macs")
        peak = roofline["int8_gmacs"] if is_int8_variant(name) and roofline["int8_gmacs"] else roofline["fp32_gmacs"]
        if result.get("kind") == "half" and roofline.get("fp16_gmacs"):
            peak = roofline["fp16_gmacs"]
        if result["macs"]:
            result["achieved_gmacs"] = {b: _sig(result["macs"] / (lat["median"] / 1e3) / 1e9, 4)
                                        for b, lat in result["latency_ms"].items()}
            result["roofline_fraction"] = {b: _sig(achieved_fraction(result["macs"], lat["median"], peak), 4)
                                           for b, lat in result["latency_ms"].items()}
    variants.update(skipped)
    return {"environment": environment_fingerprint(config.threads, config.device), "roofline": roofline,
            "config": config.to_dict(), "variants": variants}


def _main(argv: list[str]) -> int:
    """CLI of the isolated runner: one JSON argument in, the result JSON as the last stdout line."""
    warnings.filterwarnings("ignore")  # deprecation notices would only clutter the parent's error line
    try:
        if len(argv) != 1:
            raise EdgecompressError("usage: python -m edgecompress.bench '<json job>'")
        job = json.loads(argv[0])
        result = benchmark_variant(VariantSpec(**job["spec"]), prepared_dir=job["prepared_dir"],
                                   config=BenchConfig(**job["config"]), profile_dir=job.get("profile_dir"))
    except EdgecompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
