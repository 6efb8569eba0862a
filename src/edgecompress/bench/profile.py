"""Per-operator profiles: where a model's time goes, as a text table and (torch, ONNX Runtime) a Chrome
trace. Each runtime is profiled by its own profiler: torch.profiler, ONNX Runtime's, OpenVINO's
performance counters."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from edgecompress.io import atomic_path, publish, write_text
from edgecompress.quantize.onnx import OnnxModel, ort_session
from edgecompress.quantize.openvino import OpenVINOModel, cpu_config


class OrtPredict:
    """An ONNX Runtime predictor (x -> logits) that remembers its model path and threads, so that
    `profile_ops` can profile it with ONNX Runtime's own profiler (torch.profiler cannot see it)."""

    def __init__(self, path: str, threads: int) -> None:
        self.path, self.threads = path, threads
        self.runner = OnnxModel(path, threads=threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.forward(x)  # forward, not __call__: no module hooks inside the timed region


class OpenVINOPredict:
    """An OpenVINO predictor (x -> logits) that remembers its IR path and threads, for `profile_ops`."""

    def __init__(self, path: str, threads: int) -> None:
        self.path, self.threads = path, threads
        self.runner = OpenVINOModel(path, threads=threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.forward(x)  # forward, not __call__: no module hooks inside the timed region


def profile_ops(predict: Callable[[torch.Tensor], Any], inputs: torch.Tensor, out_dir: str | Path, name: str,
                *, top: int = 25, warmup: int = 3, iterations: int = 5) -> dict[str, Any]:
    """Per-op time of `predict` on `inputs`: `<name>_ops.txt` (op table) + `<name>_trace.json` (Chrome
    trace), both written atomically. Torch callables go through `torch.profiler` (+ CUDA activity on
    GPU); ONNX Runtime predictors (`OrtPredict`, invisible to the torch profiler) through ORT's own
    profiler, whose per-node kernel times are aggregated by op type into the same kind of table.

    Returns:
        {"table", "trace", "source", "iterations", "top_ops": first 5 [{"name", "self_cpu_ms", "calls"}]}
        with times and calls per inference (averaged over `iterations`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path, trace_path = out_dir / f"{name}_ops.txt", out_dir / f"{name}_trace.json"
    if isinstance(predict, OrtPredict):
        return _profile_ort(predict, inputs, table_path, trace_path, top=top, warmup=warmup, iterations=iterations)
    if isinstance(predict, OpenVINOPredict):
        return _profile_openvino(predict, inputs, table_path, top=top, warmup=warmup, iterations=iterations)
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


def _profile_ort(predict: OrtPredict, inputs: torch.Tensor, table_path: Path, trace_path: Path, *, top: int,
                 warmup: int, iterations: int) -> dict[str, Any]:
    """ORT profiling on a separate session of the same model/threads; warm-up runs are dropped."""
    session = ort_session(predict.path, threads=predict.threads,
                          profile_prefix=table_path.parent / f".{table_path.stem}_ort")
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



def _profile_openvino(predict: OpenVINOPredict, inputs: torch.Tensor, table_path: Path, *, top: int, warmup: int,
                      iterations: int) -> dict[str, Any]:
    """OpenVINO's per-node performance counters (a separate compilation with PERF_COUNT on), summed by
    node type and the kernel that ran it (e.g. `jit_avx512_amx_I8`); OpenVINO writes no trace."""
    import openvino as ov

    compiled = ov.Core().compile_model(predict.path, "CPU", cpu_config(predict.threads, PERF_COUNT=True))
    request = compiled.create_infer_request()
    feed = [inputs.float().contiguous().numpy()]
    for _ in range(warmup):
        request.infer(feed)
    ops: dict[str, list[float]] = {}
    for _ in range(iterations):
        request.infer(feed)
        for info in request.profiling_info:  # this call's counters
            if info.status.name == "EXECUTED":
                entry = ops.setdefault(f"{info.node_type} ({info.exec_type})", [0.0, 0])
                entry[0] += info.real_time.total_seconds() * 1e3
                entry[1] += 1
    ranked = sorted(ops.items(), key=lambda kv: kv[1][0], reverse=True)
    total = sum(v[0] for v in ops.values()) or 1.0
    lines = [f"OpenVINO per-node time (performance counters), mean of {iterations} runs after {warmup} warm-up",
             f"{'node type (kernel)':<44}{'ms/run':>10}{'%':>8}{'nodes/run':>11}"]
    lines += [f"{k:<44}{v[0] / iterations:>10.4f}{100 * v[0] / total:>8.1f}{v[1] / iterations:>11.1f}"
              for k, v in ranked[:top]]
    write_text(table_path, "\n".join(lines) + "\n")
    top_ops = [{"name": k, "self_cpu_ms": round(v[0] / iterations, 5), "calls": v[1] / iterations}
               for k, v in ranked[:5]]
    return {"table": str(table_path), "trace": None, "source": "openvino performance counters",
            "iterations": iterations, "top_ops": top_ops}
