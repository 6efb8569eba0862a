"""The `bench` settings block (stage benchmark)."""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.config import Settings, check, check_choice, check_load_policy, is_batch_list
from edgecompress.quantize.config import fp32_runtime_variants

DEVICES = ("cpu", "cuda")  # where variants run and are timed


@dataclass(frozen=True)
class BenchConfig(Settings):
    """`bench` block of params.yaml."""

    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    warmup: int = 10
    repeats: int = 30
    min_time_s: float = 0.5  # timed calls go on past `repeats` until this long: a short window is at the mercy of one hiccup
    threads: int = 1
    profile: bool = False
    compile: bool = True
    isolate: bool = True
    device: str = "cpu"  # where variants run and are timed: cpu (the edge CPU) | cuda (an edge/server GPU)
    unpruned_references: bool = True  # also time the unpruned student on the pruned model's fastest FP32/INT8 runtimes
    max_load: float | None = 0.25  # other processes' (or stolen) CPU, in cores, above which a measurement is contended; null = off
    retries: int = 2  # a contended measurement is repeated (after waiting up to wait_s for a quiet machine) this often
    wait_s: float = 30.0

    def validate(self) -> None:
        check(is_batch_list(self.batch_sizes), "batch_sizes", self.batch_sizes,
              "must be a non-empty list of distinct integers >= 1")  # distinct: keys of the result
        for key, low in (("warmup", 0), ("repeats", 3), ("threads", 1)):  # IQR needs >= 3 samples
            check(getattr(self, key) >= low, key, getattr(self, key), f"must be an integer >= {low}")
        check(0 <= self.min_time_s <= 60, "min_time_s", self.min_time_s, "must be seconds in [0, 60]")
        check_choice(self.device, "device", DEVICES)
        check_load_policy(self)


LATENCY_RUNTIMES = ("eager", *fp32_runtime_variants())  # where the prune stage can time a model


@dataclass(frozen=True)
class PruneLatencyConfig(Settings):
    """`prune.latency`: where the prune stage times the model before pruning and after every step."""

    runtime: str = "openvino_fp32"  # eager | onnx_fp32 | openvino_fp32 (exported by the quantize builders)
    batch_size: int = 8
    # the benchmark's timer with its own settings (bench.threads pinned): changing how the benchmark
    # samples does not re-run pruning and everything after it
    warmup: int = 10
    repeats: int = 30
    min_time_s: float = 0.5

    def validate(self) -> None:
        check_choice(self.runtime, "runtime", LATENCY_RUNTIMES)
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")
        check(self.warmup >= 0, "warmup", self.warmup, "must be an integer >= 0")
        check(self.repeats >= 3, "repeats", self.repeats, "must be an integer >= 3")
        check(0 <= self.min_time_s <= 60, "min_time_s", self.min_time_s, "must be seconds in [0, 60]")
