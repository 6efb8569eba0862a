"""What the numbers were measured on: the hardware/software fingerprint, and the measured GEMM
roofline (the practical compute ceiling that achieved GMAC/s are compared with)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from edgecompress import EdgecompressError
from edgecompress.bench.timing import time_callable
from edgecompress.runtime import pinned_threads, timing_device


def gemm_roofline(*, threads: int, size: int = 1024, repeats: int = 10, device: str = "cpu") -> dict[str, Any]:
    """Measured GEMM throughput (GMAC/s = size^3 / median time): the practical compute ceiling.

    On CUDA (`device="cuda"`, size 4096) FP32 (TF32 off, as the eager models run by default) and FP16
    `torch.mm` are timed with CUDA events, and INT8 with `torch._int_mm`.

    FP32: `torch.mm`. INT8: both `torch._int_mm` (int8 x int8 -> int32) and `quantized::linear` with
    a packed qint8 weight on the x86 engine (the kernel the FX INT8 models run) are tried; the faster
    one is reported as `int8_gmacs`/`int8_method`, each one's figure in `int8_methods`; None when
    neither works in this build.
    """
    if timing_device(device).type == "cuda":
        return _cuda_gemm_roofline(torch.device(device), size=max(size, 4096), repeats=repeats)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    macs = float(size) ** 3

    def gmacs(fn: Callable[[], Any]) -> float:
        return macs / (time_callable(fn, warmup=2, repeats=repeats)["median_ms"] / 1e3) / 1e9

    methods: dict[str, float] = {}
    with pinned_threads(threads), torch.inference_mode():
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
    def version(package: str) -> str | None:  # installed version, read without importing the package
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(package)
        return None

    cuda = None
    if torch.cuda.is_available():
        cuda = {"version": torch.version.cuda, "device_name": torch.cuda.get_device_name(0)}
    return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torchvision": version("torchvision"), "onnxruntime": version("onnxruntime"),
            "openvino": version("openvino"), "nncf": version("nncf"),
            "quantized_engine": torch.backends.quantized.engine,
            "quantized_engines": list(torch.backends.quantized.supported_engines),
            "cuda": cuda, "device": device}
