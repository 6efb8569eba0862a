"""The chain's `benchmark` stage: every variant loaded from its saved artifact and measured side by
side on the same test split: accuracy, params, MACs, size, latency and throughput per batch size,
peak RSS, against a GEMM roofline measured in the same run.

Each variant can run in a fresh subprocess (`benchmark_variant_isolated`) so that its peak RSS is its
own and no variant warms caches for the next. Run as `python -m edgecompress.bench.chain '<json>'`
this module benchmarks one variant and prints the result as JSON on the last stdout line (the
isolated runner uses it).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from edgecompress import EdgecompressError, first_line
from edgecompress.bench.config import BenchConfig
from edgecompress.bench.contention import LoadPolicy, LoadSources, contended, watched
from edgecompress.bench.environment import achieved_fraction, environment_fingerprint, gemm_roofline
from edgecompress.bench.profile import OpenVINOPredict, OrtPredict, profile_ops
from edgecompress.bench.timing import latency_sweep, peak_rss_mb, sig, take_batch
from edgecompress.classifier import EVAL_BATCH_SIZE
from edgecompress.data import load_meta, load_split, make_loader, normalize_transform
from edgecompress.models import count_layer_macs, count_params, load_checkpoint
from edgecompress.quantize.artifacts import artifact_bytes, artifact_sha256
from edgecompress.quantize.config import VARIANTS, is_int8_variant
from edgecompress.quantize.fx import load_torchscript
from edgecompress.runtime import timing_device
from edgecompress.train import evaluate

log = logging.getLogger(__name__)

KINDS = ("checkpoint", "torchscript", "onnx", "openvino", "compiled", "half")
KIND_OF_RUNTIME = {"torch": "torchscript", "onnxruntime": "onnx", "openvino": "openvino"}  # quantize artifacts
# torch.ao INT8 kernels (fbgemm/x86/qnnpack) and the ONNX Runtime CPU provider run on the CPU only
CPU_ONLY_REASON = ("CPU-only artifact ({what}); set bench.device: cpu to measure it, "
                   "on CUDA the FP16 counterpart is pruned_fp16")


class CompileUnavailable(EdgecompressError):
    """torch.compile failed here (e.g. no C++ compiler for inductor): the stage skips the variant."""


# Variants
@dataclass(frozen=True)
class VariantSpec:
    """One artifact to benchmark."""

    name: str   # e.g. "teacher", "pruned", "ptq_x86", "onnx_int8", "pruned_compiled"
    path: str   # artifact on disk
    kind: str   # "checkpoint" | "torchscript" | "onnx" | "openvino" | "compiled" (checkpoint + torch.compile) | "half" (checkpoint in fp16)
    stage: str  # producing stage, for the report
    sha256: str | None = None  # the artifact's content hash recorded by the stage that wrote it: verified on load

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgecompressError(f"variant {self.name}: kind={self.kind!r} is invalid: {', '.join(KINDS)}")


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
    dev = timing_device(device)
    if not Path(spec.path).is_file():
        raise EdgecompressError(f"{spec.path}: artifact of variant {spec.name} not found (run stage {spec.stage})")
    if spec.sha256 is not None and artifact_sha256(spec.path) != spec.sha256:
        raise EdgecompressError(f"{spec.path}: content differs from the sha256 stage {spec.stage} recorded when it "
                                "wrote it (corrupted or edited); re-run that stage")
    if dev.type != "cpu" and spec.kind in ("onnx", "openvino", "torchscript"):
        raise EdgecompressError(f"variant {spec.name}: " + CPU_ONLY_REASON.format(what=spec.kind))
    if spec.kind == "onnx":
        return OrtPredict(spec.path, threads), {"format": "onnx (onnxruntime CPUExecutionProvider)"}
    if spec.kind == "openvino":
        return OpenVINOPredict(spec.path, threads), {"format": "openvino IR (CPU plugin)"}
    if spec.kind == "torchscript":
        module = load_torchscript(spec.path).eval()
        info = {"format": f"torchscript (quantized engine {torch.backends.quantized.engine})"}
    else:
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
                predict_compiled(take_batch(example, int(b)).to(dev))
        except Exception as exc:  # noqa: BLE001 - inductor raises many types (missing compiler, ...)
            raise CompileUnavailable(f"variant {spec.name}: torch.compile failed ({first_line(exc)})") from None
        info["compile_s"] = round(time.perf_counter() - start, 3)
    return predict_compiled, info


def _test_images(prepared_dir: str | Path, meta: dict, count: int) -> torch.Tensor:
    images, _ = load_split(prepared_dir, "test")
    return normalize_transform(meta)(images[:count].float().div_(255.0)).contiguous()  # as make_loader does


def benchmark_variant(spec: VariantSpec, *, prepared_dir: str | Path, config: BenchConfig,
                      profile_dir: str | Path | None = None, eval_batch_size: int | None = None) -> dict[str, Any]:
    """Benchmark one variant in this process (CPU): accuracy, size, latency sweep, peak RSS, profile.

    Accuracy is `train.evaluate` on the full test split with the evaluation batch size the producing
    stages use (`classifier.EVAL_BATCH_SIZE` unless `eval_batch_size` is given), so it equals what they
    reported. Params/MACs are
    counted for checkpoint/compiled kinds and None for TorchScript/ONNX (the stage fills them from the
    source model).
    """
    eval_batch_size = eval_batch_size or EVAL_BATCH_SIZE
    torch.set_num_threads(config.threads)
    device = timing_device(config.device)
    meta = load_meta(prepared_dir)
    images = _test_images(prepared_dir, meta, max(config.batch_sizes)).to(device)
    predict, info = load_predict(spec, threads=config.threads, example=images, batch_sizes=config.batch_sizes,
                                 device=config.device)
    loader = make_loader(prepared_dir, "test", batch_size=eval_batch_size, train=False, seed=0)
    accuracy = evaluate(_AsModule(predict), loader, num_classes=meta["num_classes"], device=device)["accuracy"]
    params = macs = None
    if spec.kind in ("checkpoint", "compiled", "half"):
        model, _ = load_checkpoint(spec.path)  # a fresh eager copy: the op counter must not trace the compiled one
        params, macs = count_params(model), count_layer_macs(model, tuple(images.shape[1:]))
        del model
    sweep = latency_sweep(predict, images, batch_sizes=config.batch_sizes, warmup=config.warmup,
                          repeats=config.repeats, min_time_s=config.min_time_s, device=config.device)
    result: dict[str, Any] = {
        "name": spec.name, "stage": spec.stage, "kind": spec.kind, "format": info["format"],
        "artifact": str(spec.path), "accuracy": accuracy, "params": params, "macs": macs,
        "size_mb": round(artifact_bytes(spec.path) / 1e6, 4), **sweep, "threads": config.threads}
    if "compile_s" in info:
        result["compile_s"] = info["compile_s"]
    if config.profile and profile_dir is not None:
        result["profile"] = profile_ops(predict, take_batch(images, config.batch_sizes[0]), profile_dir, spec.name)
    result["peak_rss_mb"] = round(peak_rss_mb(), 2)  # last: covers load, evaluation, timing and profiling
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 1e6, 2)
        result["device"] = torch.cuda.get_device_name(device)
    return result


def benchmark_variant_isolated(spec: VariantSpec, *, prepared_dir: str | Path, config: BenchConfig,
                               profile_dir: str | Path | None = None, timeout_s: int = 600) -> dict[str, Any]:
    """`benchmark_variant` in a fresh `python -m edgecompress.bench.chain` process: peak RSS is this variant's
    own, and no allocator, kernel cache or page cache state is inherited from another variant.
    OMP/MKL thread variables are pinned to `config.threads` before torch starts in the child.

    Raises:
        EdgecompressError: with the child's last stderr line when it fails or times out.
    """
    payload = json.dumps({"spec": asdict(spec), "prepared_dir": str(prepared_dir), "config": config.to_dict(),
                          "profile_dir": None if profile_dir is None else str(profile_dir)})
    env = dict(os.environ, OMP_NUM_THREADS=str(config.threads), MKL_NUM_THREADS=str(config.threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgecompress.bench.chain", payload], capture_output=True,
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


# The whole chain
CHAIN_CHECKPOINTS = (("teacher", "teacher.pt", "teacher"), ("student_baseline", "student_baseline.pt", "student_baseline"),
                     ("student", "student.pt", "distill"), ("pruned", "pruned.pt", "prune"))


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
        kind = KIND_OF_RUNTIME[VARIANTS[name].runtime]
        if cuda:
            skipped[name] = {"stage": "quantize", "skipped": CPU_ONLY_REASON.format(what=kind)}
            continue
        specs.append(VariantSpec(name, str(quantized_dir / entry["artifact"]), kind, "quantize", entry.get("sha256")))
    return specs, skipped


def measure_watched(spec: VariantSpec, *, prepared_dir: str | Path, config: BenchConfig,
                    profile_dir: str | Path | None = None, sources: LoadSources | None = None) -> dict[str, Any]:
    """`benchmark_variant` (isolated or not, per `config.isolate`) with the machine's load recorded around it
    (`result["load"]`); a measurement taken under contention (`config.max_load`) is repeated up to
    `config.retries` times after waiting up to `config.wait_s` for a quiet machine, and stays flagged
    ("contended": true) when the machine never quietened (`contention.watched`)."""
    measure = benchmark_variant_isolated if config.isolate else benchmark_variant
    result, load = watched(lambda: measure(spec, prepared_dir=prepared_dir, config=config, profile_dir=profile_dir),
                           LoadPolicy.of(config, sources), spec.name)
    return result if load is None else {**result, "load": load}


def run_benchmark(specs: Sequence[VariantSpec], skipped: dict[str, dict[str, Any]], *, prepared_dir: str | Path,
                  config: BenchConfig, profile_dir: str | Path | None = None) -> dict[str, Any]:
    """Benchmark every spec (each in its own process when `config.isolate`) against a roofline measured
    in the same run; the result is `metrics/benchmark.json`.

    Quantized artifacts carry no op counter, so they get params/MACs of the model they were made from
    (`pruned`): the work per image is the same, done in another precision.
    """
    if config.device == "cuda" and not torch.cuda.is_available():
        raise EdgecompressError("bench.device='cuda' but no CUDA device is available here: use bench.device: cpu")
    roofline = gemm_roofline(threads=config.threads, device=config.device)
    log.info("roofline (%d threads): FP32 GEMM %.1f GMAC/s, INT8 %s GMAC/s (%s)", config.threads,
             roofline["fp32_gmacs"], roofline["int8_gmacs"], roofline["int8_method"])
    variants: dict[str, Any] = {}
    with tqdm(total=len(specs) * len(config.batch_sizes), desc="benchmark", unit="variant x batch",
              disable=None) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.name)
            try:
                result = measure_watched(spec, prepared_dir=prepared_dir, config=config, profile_dir=profile_dir)
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
            result["achieved_gmacs"] = {b: sig(result["macs"] / (lat["median"] / 1e3) / 1e9, 4)
                                        for b, lat in result["latency_ms"].items()}
            result["roofline_fraction"] = {b: sig(achieved_fraction(result["macs"], lat["median"], peak), 4)
                                           for b, lat in result["latency_ms"].items()}
    variants.update(skipped)
    return {"environment": environment_fingerprint(config.threads, config.device), "roofline": roofline,
            "config": config.to_dict(), "variants": variants, "contended": [name for name, _ in contended(variants)]}


def _main(argv: list[str]) -> int:
    """CLI of the isolated runner: one JSON argument in, the result JSON as the last stdout line."""
    warnings.filterwarnings("ignore")  # deprecation notices would only clutter the parent's error line
    try:
        if len(argv) != 1:
            raise EdgecompressError("usage: python -m edgecompress.bench.chain '<json job>'")
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
