"""The `bench` settings block (stage benchmark)."""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.config import Settings, check, check_choice, is_batch_list

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

    def validate(self) -> None:
        check(is_batch_list(self.batch_sizes), "batch_sizes", self.batch_sizes,
              "must be a non-empty list of distinct integers >= 1")  # distinct: keys of the result
        for key, low in (("warmup", 0), ("repeats", 3), ("threads", 1)):  # IQR needs >= 3 samples
            check(getattr(self, key) >= low, key, getattr(self, key), f"must be an integer >= {low}")
        check(0 <= self.min_time_s <= 60, "min_time_s", self.min_time_s, "must be seconds in [0, 60]")
        check_choice(self.device, "device", DEVICES)
