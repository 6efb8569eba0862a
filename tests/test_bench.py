"""Tests of the benchmark measurement library (small models and sizes: the whole file runs in seconds)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.params import parse_params
from edgecompress.bench.chain import (CompileUnavailable, VariantSpec, benchmark_variant, benchmark_variant_isolated,
                                      chain_variants, load_predict, run_benchmark)
from edgecompress.bench.config import BenchConfig
from edgecompress.bench.environment import achieved_fraction, environment_fingerprint, gemm_roofline
from edgecompress.bench.profile import profile_ops
from edgecompress.bench.timing import BlockTimer, latency_sweep, peak_rss_mb, time_callable

torch.set_num_threads(1)
TINY = BenchConfig(batch_sizes=(1, 3), warmup=1, repeats=3, min_time_s=0.0, threads=1, compile=False)


def test_block_timer_measures_sleep() -> None:
    timer = BlockTimer("cpu")
    for _ in range(3):
        with timer("sleep"):
            time.sleep(0.02)
    stats = timer.summary()["sleep"]
    assert stats["count"] == 3
    assert 18 <= stats["median_ms"] <= 40
    assert stats["total_ms"] == pytest.approx(3 * stats["mean_ms"])


def test_time_callable_measures_sleep() -> None:
    result = time_callable(lambda: time.sleep(0.01), warmup=1, repeats=5)
    assert 9 <= result["median_ms"] <= 25
    assert result["iqr_ms"] >= 0 and result["min_ms"] <= result["median_ms"] and result["repeats"] == 5


def test_time_callable_keeps_timing_until_min_time() -> None:
    calls = []
    result = time_callable(lambda: calls.append(time.sleep(0.002)), warmup=0, repeats=3, min_time_s=0.1)
    # ~0.1 s of 2 ms calls is far more than the 3 asked for, plus the 0.02 s warm-up (min_time_s / 5)
    assert 30 <= result["repeats"] <= 60 and len(calls) >= result["repeats"] + 5
    assert result["repeats"] * result["min_ms"] <= 1000 * 0.1 + result["max_ms"]


def test_block_timer_decorator_context_and_table() -> None:
    timer = BlockTimer()

    @timer.wrap("nms")
    def nms(x: int) -> int:
        return x + 1

    assert nms(1) == 2 and nms(2) == 3
    with timer("preprocess"):
        pass
    summary = timer.summary()
    assert summary["nms"]["count"] == 2 and summary["preprocess"]["count"] == 1
    assert summary["_peak_memory_mb"] > 0 and timer.peak_memory_mb() > 0
    table = timer.table()
    assert "nms" in table and "preprocess" in table and "peak memory" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_timer_without_gpu_is_a_clear_error() -> None:
    # Chosen behaviour: an error, not a silent perf_counter fallback that would mislabel CPU numbers.
    with pytest.raises(EdgecompressError, match="no CUDA device"):
        BlockTimer("cuda")
    with pytest.raises(EdgecompressError, match="no CUDA device"):
        time_callable(lambda: None, warmup=0, repeats=3, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_timers_use_events() -> None:
    a = torch.randn(512, 512, device="cuda")
    timer = BlockTimer("cuda")
    for _ in range(3):
        with timer("mm"):
            a @ a
    assert timer.summary()["mm"]["median_ms"] > 0 and timer.summary()["_peak_memory_mb"] > 0
    assert time_callable(lambda: a @ a, warmup=2, repeats=5, device="cuda")["median_ms"] > 0
    sweep = latency_sweep(nn.Linear(8, 4).cuda(), torch.randn(5, 8), batch_sizes=(1, 4), warmup=1, repeats=3,
                          device="cuda")
    assert set(sweep["latency_ms"]) == {"1", "4"}


def test_latency_sweep_tiny_linear() -> None:
    model = nn.Linear(16, 4).eval()
    images = torch.randn(5, 16)  # N < largest batch: cycled
    sweep = latency_sweep(model, images, batch_sizes=(1, 4, 8), warmup=2, repeats=5)
    for key in ("latency_ms", "batch_latency_ms", "throughput"):
        assert set(sweep[key]) == {"1", "4", "8"}
    for b in (1, 4, 8):
        batch, per_sample = sweep["batch_latency_ms"][str(b)], sweep["latency_ms"][str(b)]
        assert all(math.isfinite(v) and v > 0 for v in (batch["median"], per_sample["median"]))
        assert batch["iqr"] >= 0 and per_sample["median"] == pytest.approx(batch["median"] / b, rel=1e-3)
        assert sweep["throughput"][str(b)] == pytest.approx(b / (batch["median"] / 1e3), rel=1e-3)
    json.dumps(sweep)


def test_gemm_roofline_and_achieved_fraction() -> None:
    roof = gemm_roofline(threads=1, size=256, repeats=3)
    assert roof["fp32_gmacs"] > 0 and roof["size"] == 256 and roof["threads"] == 1
    assert (roof["int8_gmacs"] is None) == (roof["int8_method"] is None)
    assert roof["int8_gmacs"] is None or roof["int8_gmacs"] > 0
    assert achieved_fraction(10**9, 1000.0, 1.0) == pytest.approx(1.0)
    assert achieved_fraction(5 * 10**8, 1.0, 1000.0) == pytest.approx(0.5)


def test_profile_ops_writes_table_and_trace(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    out = profile_ops(predict, torch.randn(2, 3, 8, 8), tmp_path / "prof", "tiny", top=10)
    table, trace = Path(out["table"]), Path(out["trace"])
    assert table.name == "tiny_ops.txt" and "conv" in table.read_text().lower()
    assert isinstance(json.loads(trace.read_text()), (dict, list))
    assert 1 <= len(out["top_ops"]) <= 5 and {"name", "self_cpu_ms", "calls"} <= set(out["top_ops"][0])
    assert not [p for p in (tmp_path / "prof").iterdir() if p.name.startswith(".")]  # no temp files left


def test_environment_fingerprint_keys() -> None:
    env = environment_fingerprint(2)
    for key in ("cpu", "logical_cores", "threads", "python", "platform", "torch", "torchvision", "onnxruntime",
                "quantized_engine", "quantized_engines", "cuda", "device"):
        assert key in env
    assert env["threads"] == 2 and env["device"] == "cpu" and env["cpu"]
    json.dumps(env)
    assert peak_rss_mb() > 10


@pytest.mark.parametrize("changes, key", [({"batch_sizes": []}, "batch_sizes"), ({"batch_sizes": [0]}, "batch_sizes"),
                                          ({"repeats": 1}, "repeats"), ({"threads": 0}, "threads"),
                                          ({"warmup": -1}, "warmup"), ({"profile": "yes"}, "profile"),
                                          ({"min_time_s": -1}, "min_time_s"), ({"min_time_s": True}, "min_time_s"),
                                          ({"device": "tpu"}, "device"), ({"device": "auto"}, "device")])
def test_bench_config_validation(changes: dict, key: str) -> None:
    with pytest.raises(EdgecompressError) as info:
        parse_params({"bench": changes})
    message = str(info.value)
    assert f"bench.{key}=" in message and "\n" not in message
    assert "(" not in message.split(" is invalid")[0]  # lists shown as written in params.yaml, not as tuples


def test_bench_config_roundtrip() -> None:
    config = parse_params({"bench": {"batch_sizes": [1, 2], "isolate": False}}).bench
    assert config.batch_sizes == (1, 2) and config.to_dict()["batch_sizes"] == [1, 2]
    assert parse_params({"bench": config.to_dict()}).bench == config
    assert parse_params({"bench": {"device": "cuda"}}).bench.device == "cuda"  # checked where it runs
    with pytest.raises(EdgecompressError, match="bench.gpu is not a known parameter"):
        parse_params({"bench": {"gpu": "cpu"}})


@pytest.fixture(scope="module")
def tiny_variant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, nn.Module]:
    """A prepared 200-image digits split and an untrained resnet20 (width 0.25) checkpoint."""
    from edgecompress.data import prepare_dataset
    from edgecompress.models import arch_config, build_model, save_checkpoint

    root = tmp_path_factory.mktemp("bench")
    prepared = root / "prepared"
    prepare_dataset(name="digits", root=None, image_size=32, val_fraction=0.15, test_fraction=0.15,
                    max_samples=200, seed=0, out_dir=prepared)
    torch.manual_seed(0)
    model = build_model("resnet20", 10, width=0.25).eval()
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, model, arch_config("resnet20", 10, 0.25, True), {"stage": "test"})
    return prepared, ckpt, model


def test_benchmark_variant_in_process_and_isolated(tiny_variant: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    from edgecompress.data import make_loader
    from edgecompress.models import count_params
    from edgecompress.train import evaluate

    prepared, ckpt, model = tiny_variant
    expected = evaluate(model, make_loader(prepared, "test", batch_size=256, train=False, seed=0),
                        num_classes=10)["accuracy"]
    spec = VariantSpec("tiny", str(ckpt), "checkpoint", "test")
    config = BenchConfig(**{**TINY.to_dict(), "profile": True})
    local = benchmark_variant(spec, prepared_dir=prepared, config=config, profile_dir=tmp_path / "prof")
    assert local["accuracy"] == expected
    assert local["params"] == count_params(model) and local["macs"] > 0
    assert local["size_mb"] == pytest.approx(ckpt.stat().st_size / 1e6, abs=1e-4)
    assert set(local["latency_ms"]) == set(local["throughput"]) == {"1", "3"}
    assert local["peak_rss_mb"] > 0 and Path(local["profile"]["table"]).is_file()
    isolated = benchmark_variant_isolated(spec, prepared_dir=prepared, config=TINY, timeout_s=300)
    assert isolated["accuracy"] == local["accuracy"] == expected
    assert isolated["name"] == "tiny" and isolated["stage"] == "test" and isolated["peak_rss_mb"] > 0
    assert "profile" not in isolated and set(isolated["batch_latency_ms"]) == {"1", "3"}


def test_benchmark_variant_compiled(tiny_variant: tuple[Path, Path, nn.Module]) -> None:
    """The pruned_compiled path: torch.compile'd checkpoint, compile time reported apart, same accuracy."""
    prepared, ckpt, _ = tiny_variant
    eager = benchmark_variant(VariantSpec("tiny", str(ckpt), "checkpoint", "test"), prepared_dir=prepared, config=TINY)
    try:
        compiled = benchmark_variant(VariantSpec("tiny_compiled", str(ckpt), "compiled", "test"), prepared_dir=prepared,
                                     config=TINY)
    except CompileUnavailable as exc:
        pytest.skip(f"torch.compile unavailable here: {exc}")
    assert compiled["compile_s"] > 0 and compiled["format"].startswith("torch.compile")
    assert compiled["accuracy"] == eager["accuracy"] and compiled["macs"] == eager["macs"]
    assert all(t["median"] > 0 for t in compiled["latency_ms"].values())


def test_benchmark_variant_torchscript_and_onnx(tiny_variant: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    from edgecompress.quantize.fx import save_torchscript
    from edgecompress.quantize.onnx import export_onnx

    prepared, _, model = tiny_variant
    example = torch.randn(2, 3, 32, 32)
    save_torchscript(model, example, tmp_path / "fp32.ts")
    export_onnx(model, example, tmp_path / "fp32.onnx")
    config = BenchConfig(**{**TINY.to_dict(), "batch_sizes": (2,), "profile": True})
    ts = benchmark_variant(VariantSpec("ts", str(tmp_path / "fp32.ts"), "torchscript", "quantize"),
                           prepared_dir=prepared, config=config, profile_dir=tmp_path / "prof")
    ort = benchmark_variant(VariantSpec("onnx", str(tmp_path / "fp32.onnx"), "onnx", "quantize"),
                            prepared_dir=prepared, config=config, profile_dir=tmp_path / "prof")
    assert ts["params"] is None and ts["format"].startswith("torchscript") and ort["format"].startswith("onnx")
    assert ts["accuracy"] == ort["accuracy"]  # same FP32 weights on 30 images: identical predictions
    assert ort["profile"]["source"] == "onnxruntime profiler" and ort["profile"]["top_ops"]
    assert isinstance(json.loads(Path(ort["profile"]["trace"]).read_text()), list)
    # an artifact whose bytes changed after the producing stage recorded its sha256 is refused
    from edgecompress.quantize.artifacts import artifact_sha256
    recorded = artifact_sha256(tmp_path / "fp32.onnx")
    assert load_predict(VariantSpec("onnx", str(tmp_path / "fp32.onnx"), "onnx", "quantize", recorded), threads=1)
    raw = bytearray((tmp_path / "fp32.onnx").read_bytes())
    raw[-100] ^= 0xFF
    (tmp_path / "fp32.onnx").write_bytes(bytes(raw))
    with pytest.raises(EdgecompressError, match="fp32.onnx: content differs from the sha256 stage quantize recorded"):
        load_predict(VariantSpec("onnx", str(tmp_path / "fp32.onnx"), "onnx", "quantize", recorded), threads=1)


def test_benchmark_variant_openvino(tiny_variant: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    """An OpenVINO IR: timed with the same timer, its size is .xml + .bin, profiled by its own counters."""
    from edgecompress.quantize.openvino import convert_to_openvino

    prepared, ckpt, model = tiny_variant
    convert_to_openvino(model, torch.randn(2, 3, 32, 32), tmp_path / "fp32.xml")
    config = BenchConfig(**{**TINY.to_dict(), "batch_sizes": (2,), "profile": True})
    ov = benchmark_variant(VariantSpec("ov", str(tmp_path / "fp32.xml"), "openvino", "quantize"),
                           prepared_dir=prepared, config=config, profile_dir=tmp_path / "prof")
    eager = benchmark_variant(VariantSpec("tiny", str(ckpt), "checkpoint", "test"), prepared_dir=prepared, config=TINY)
    assert ov["format"].startswith("openvino") and ov["accuracy"] == eager["accuracy"]
    on_disk = (tmp_path / "fp32.xml").stat().st_size + (tmp_path / "fp32.bin").stat().st_size
    assert ov["size_mb"] == pytest.approx(on_disk / 1e6, abs=1e-4) and ov["latency_ms"]["2"]["median"] > 0
    assert ov["profile"]["source"] == "openvino performance counters" and ov["profile"]["top_ops"]
    assert "Convolution" in Path(ov["profile"]["table"]).read_text()


def test_isolated_failure_reports_child_error(tiny_variant: tuple[Path, Path, nn.Module], tmp_path: Path) -> None:
    prepared, _, _ = tiny_variant
    spec = VariantSpec("missing", str(tmp_path / "nope.pt"), "checkpoint", "prune")
    with pytest.raises(EdgecompressError, match="nope.pt: artifact of variant missing not found"):
        benchmark_variant_isolated(spec, prepared_dir=prepared, config=TINY, timeout_s=120)
    with pytest.raises(EdgecompressError, match="kind='bad' is invalid"):
        VariantSpec("x", "x", "bad", "x")


def test_chain_variants_on_cuda_lists_cpu_only_artifacts_as_skipped(tmp_path: Path) -> None:
    quantize_metrics = {"variants": {"fp32": {"artifact": "fp32.ts"}, "ptq_x86": {"artifact": "ptq_x86.ts"},
                                     "onnx_int8": {"artifact": "int8.onnx"},
                                     "ptq_qnnpack": {"skipped": "engine missing"}}}
    cpu_specs, cpu_skipped = chain_variants(models_dir=tmp_path, quantized_dir=tmp_path, compile=False,
                                            quantize_metrics=quantize_metrics)
    assert [s.name for s in cpu_specs][-2:] == ["ptq_x86", "onnx_int8"] and set(cpu_skipped) == {"ptq_qnnpack"}
    specs, skipped = chain_variants(models_dir=tmp_path, quantized_dir=tmp_path, compile=True,
                                    quantize_metrics=quantize_metrics, device="cuda")
    names = [s.name for s in specs]
    assert names[-2:] == ["pruned_compiled", "pruned_fp16"] and "ptq_x86" not in names
    half = specs[-1]
    assert half.kind == "half" and half.path == str(tmp_path / "pruned.pt")
    assert set(skipped) == {"ptq_x86", "onnx_int8", "ptq_qnnpack"}
    assert "CPU-only artifact (onnx)" in skipped["onnx_int8"]["skipped"]
    assert skipped["ptq_qnnpack"]["skipped"] == "engine missing"


def test_benchmark_variant_half_kind(tiny_variant: tuple[Path, Path, nn.Module]) -> None:
    """`half`: the checkpoint in float16 (CPU here, CUDA on a GPU machine), float32 logits out."""
    prepared, ckpt, _ = tiny_variant
    try:
        half = benchmark_variant(VariantSpec("tiny_fp16", str(ckpt), "half", "test"), prepared_dir=prepared,
                                 config=TINY)
    except RuntimeError as exc:  # a CPU build without half-precision convolutions
        pytest.skip(f"fp16 convolution unavailable on this CPU: {exc}")
    assert half["format"] == "pytorch eager fp16 (cpu)" and half["macs"] > 0
    assert 0 <= half["accuracy"] <= 1 and all(t["median"] > 0 for t in half["latency_ms"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_benchmark_without_gpu_is_a_clear_error(tiny_variant: tuple[Path, Path, nn.Module]) -> None:
    prepared, ckpt, _ = tiny_variant
    config = BenchConfig(**{**TINY.to_dict(), "device": "cuda"})
    with pytest.raises(EdgecompressError, match="bench.device='cuda' but no CUDA device"):
        run_benchmark([VariantSpec("tiny", str(ckpt), "checkpoint", "test")], {}, prepared_dir=prepared, config=config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_benchmark_variant_on_cuda(tiny_variant: tuple[Path, Path, nn.Module]) -> None:
    """FP32 on the GPU predicts what the CPU predicts; FP16 agrees closely; both record peak GPU memory."""
    prepared, ckpt, _ = tiny_variant
    config = BenchConfig(**{**TINY.to_dict(), "device": "cuda"})
    cpu = benchmark_variant(VariantSpec("tiny", str(ckpt), "checkpoint", "test"), prepared_dir=prepared, config=TINY)
    gpu = benchmark_variant(VariantSpec("tiny", str(ckpt), "checkpoint", "test"), prepared_dir=prepared, config=config)
    half = benchmark_variant(VariantSpec("tiny_fp16", str(ckpt), "half", "test"), prepared_dir=prepared, config=config)
    assert gpu["format"] == "pytorch eager fp32 (cuda)" and half["format"] == "pytorch eager fp16 (cuda)"
    assert abs(gpu["accuracy"] - cpu["accuracy"]) <= 1 / 30 and abs(half["accuracy"] - gpu["accuracy"]) <= 2 / 30
    assert gpu["peak_gpu_mb"] > 0 and half["peak_gpu_mb"] > 0 and gpu["device"]
    roof = gemm_roofline(threads=1, device="cuda", repeats=3)
    assert roof["fp16_gmacs"] > roof["fp32_gmacs"] > 0 and roof["size"] == 4096


# ----------------------------------------------------------------------------------------------
# Pruning's latency (bench.pruning)
def _timed(ms: dict[str, float], **extra) -> dict:
    return {"latency_ms": {b: {"median": v, "iqr": 0.0} for b, v in ms.items()}, **extra}


def test_pruning_effect_pairs_best_runtimes_with_the_unpruned_student(tmp_path: Path) -> None:
    from edgecompress.bench.pruning import best_runtimes, pruning_effect, reference_specs
    variants = {"student": _timed({"1": 1.0, "8": 0.5}, macs=1000, name="student"),
                "pruned": _timed({"1": 0.8, "8": 0.4}, macs=600),
                "pruned_compiled": {"stage": "prune", "skipped": "no compiler"},
                "onnx_fp32": _timed({"1": 0.5, "8": 0.3}), "openvino_fp32": _timed({"1": 0.4, "8": 0.35}),
                "qat": _timed({"1": 0.1, "8": 0.05}), "onnx_int8": _timed({"1": 0.3, "8": 0.2})}
    best = best_runtimes(variants, "8")
    assert best == {"best_fp32": "onnx_fp32", "best_int8": "onnx_int8"}  # QAT is never a reference: it trains
    built = []
    specs = reference_specs(best, student_path="models/student.pt", folder=tmp_path,
                            build=lambda name, folder: built.append(name) or folder / f"{name}.onnx")
    assert built == ["onnx_fp32", "onnx_int8"]
    assert (specs["best_fp32"].name, specs["best_fp32"].kind) == ("unpruned_onnx_fp32", "onnx")
    references = {"best_fp32": _timed({"1": 0.6, "8": 0.45}, name="unpruned_onnx_fp32"),
                  "best_int8": _timed({"1": 0.3, "8": 0.2}, name="unpruned_onnx_int8")}
    effect = pruning_effect(variants, references, best, [1, 8])
    assert effect["mac_reduction"] == pytest.approx(0.4)
    fp32 = effect["pairs"]["best_fp32"]["latency_ms"]["8"]
    assert fp32["latency_reduction"] == pytest.approx(1 - 0.3 / 0.45, abs=1e-4)
    assert fp32["realised"] == pytest.approx((1 - 0.3 / 0.45) / 0.4, abs=1e-3)
    assert effect["pairs"]["eager"]["unpruned"] == "student"
    assert effect["pairs"]["eager"]["latency_ms"]["8"]["realised"] == pytest.approx(0.2 / 0.4)
    assert effect["pairs"]["best_int8"]["latency_ms"]["1"]["latency_reduction"] == 0.0  # slower is negative, equal 0
    # eager as the fastest FP32 runtime: its unpruned side is the benchmark's own `student`, nothing built
    assert reference_specs({"best_fp32": "pruned", "best_int8": None}, student_path="s.pt", folder=tmp_path,
                           build=lambda *a: pytest.fail("built")) == {}


def test_latency_probe_times_a_model_on_an_exported_runtime() -> None:
    from edgecompress.bench.config import PruneLatencyConfig
    from edgecompress.bench.pruning import latency_probe
    from edgecompress.quantize.config import QuantizeConfig
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    bench = BenchConfig(warmup=1, repeats=3, min_time_s=0.0, threads=1)
    threads = torch.get_num_threads()
    for runtime in ("eager", "onnx_fp32"):
        latency = PruneLatencyConfig(runtime=runtime, batch_size=2, warmup=1, repeats=3, min_time_s=0.0)
        probe = latency_probe(torch.randn(2, 3, 16, 16), latency=latency, bench=bench, quantize=QuantizeConfig())
        result = probe(model.train())
        assert set(result) == {"latency_ms"} and result["latency_ms"] > 0
        assert model.training and torch.get_num_threads() == threads  # mode and threads restored
    with pytest.raises(EdgecompressError, match="runtime='tensorrt' is invalid"):
        PruneLatencyConfig(runtime="tensorrt")


def test_plot_steps_writes_png_with_or_without_latency(tmp_path: Path) -> None:
    from edgecompress.bench.pruning import plot_steps
    records = [{"step": 0, "macs": 100, "latency_ms": 0.2, "val_accuracy": 0.9},
               {"step": 1, "macs": 60, "latency_ms": 0.15, "val_accuracy": 0.5}]
    plot_steps(records, tmp_path / "steps.png", title="t")
    plot_steps([{"step": 0, "macs": 100}, {"step": 1, "macs": 60}], tmp_path / "bare.png", title="t")  # torchrun: no probes
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "bare.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------
# Contention (bench.contention)
class FakeMachine:
    """/proc/stat and rusage as a script: each variant's measurement may run beside another tenant."""

    def __init__(self, busy_others: list[float]) -> None:
        self.busy_others, self.t, self.busy, self.own = list(busy_others), 0.0, 0.0, 0.0

    def run(self, seconds: float = 2.0) -> None:  # one measurement: our core busy, others as scripted
        other = self.busy_others.pop(0) if self.busy_others else 0.0
        self.t += seconds
        self.own += seconds
        self.busy += seconds * (1 + other)

    def sources(self):
        from edgecompress.bench.contention import LoadSources
        return LoadSources(cpu_ticks=lambda: (self.busy, 0.0, 2 * self.t), own_cpu=lambda: self.own,
                           load_average=lambda: 1.0, clock=lambda: self.t)


def test_load_monitor_flags_other_processes_cpu() -> None:
    from edgecompress.bench.contention import LoadMonitor
    machine = FakeMachine([0.0, 0.9])
    monitor = LoadMonitor(0.25, machine.sources())
    monitor.start(); machine.run(); quiet = monitor.stop()
    monitor.start(); machine.run(); busy = monitor.stop()
    assert quiet["contended"] is False and quiet["other_cpu_cores"] == 0.0
    assert busy["contended"] is True and busy["other_cpu_cores"] == pytest.approx(0.9)


def test_contended_measurement_is_retried_then_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.bench import chain, contention
    machine = FakeMachine([0.8, 0.0, 0.8, 0.8, 0.8])  # 1st variant: busy then quiet; 2nd: busy every time
    calls = []

    def fake_measure(spec, **_):
        calls.append(spec.name)
        machine.run()
        return {"name": spec.name, "latency_ms": {}}
    monkeypatch.setattr(chain, "benchmark_variant", fake_measure)
    monkeypatch.setattr(contention.time, "sleep", lambda s: None)  # wait_for_quiet: no real waiting in a test
    config = BenchConfig(isolate=False, max_load=0.25, retries=1, wait_s=0)
    first = chain.measure_watched(VariantSpec("a", "a.pt", "checkpoint", "x"), prepared_dir=".", config=config,
                                  sources=machine.sources())
    second = chain.measure_watched(VariantSpec("b", "b.pt", "checkpoint", "x"), prepared_dir=".", config=config,
                                   sources=machine.sources())
    assert calls == ["a", "a", "b", "b"]
    assert first["load"]["contended"] is False and first["load"]["attempts"] == 2
    assert second["load"]["contended"] is True and second["load"]["attempts"] == 2
