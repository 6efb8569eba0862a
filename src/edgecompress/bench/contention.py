"""Did another tenant share the CPU while we timed? (issue 16: measured while other jobs ran, the zoo
reported 229 ms/image for a 1 ms network, numbers that looked like results.)

`LoadMonitor` reads the kernel's CPU accounting (`/proc/stat`: busy and steal ticks of all cores) and
this process's own CPU time (itself and its waited-for children, e.g. the isolated benchmark runner)
before and after a measurement. What the machine spent beyond our own work is the other processes'
CPU, in cores; stolen time is the hypervisor giving our vCPUs to another VM. Either above
`bench.max_load` marks the measurement as taken under contention; the benchmark then waits for a quiet
machine and measures again (`bench.retries`), and the metrics and the report say which numbers are
still flagged. Where /proc/stat does not exist (macOS, Windows) the load average alone is used.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def read_cpu_ticks() -> tuple[float, float, float] | None:
    """(busy, steal, total) seconds of all cores since boot from /proc/stat, None where it does not exist."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy * TICK_S, steal * TICK_S, (busy + idle + iowait + steal) * TICK_S


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


@dataclass
class LoadSources:
    """Where the monitor reads the machine's state (replaced by fakes in tests)."""

    cpu_ticks: Callable[[], tuple[float, float, float] | None] = read_cpu_ticks
    own_cpu: Callable[[], float] = own_cpu_seconds
    load_average: Callable[[], float] = lambda: os.getloadavg()[0]
    clock: Callable[[], float] = time.monotonic


class LoadMonitor:
    """Brackets one measurement: `start()`, then `stop()` returns what the rest of the machine did meanwhile.

    Args:
        max_load: other processes' CPU (cores, averaged over the measurement) or stolen CPU (cores) above
            which the measurement counts as contended.
    """

    def __init__(self, max_load: float, sources: LoadSources | None = None) -> None:
        self.max_load, self.sources = max_load, sources or LoadSources()
        self._start: tuple[Any, float, float] | None = None

    def start(self) -> None:
        self._start = (self.sources.cpu_ticks(), self.sources.own_cpu(), self.sources.clock())

    def stop(self) -> dict[str, Any]:
        """{"other_cpu_cores", "steal_cores", "load_average_1m", "seconds", "contended"} for the interval."""
        if self._start is None:
            raise RuntimeError("LoadMonitor.stop() before start()")
        ticks0, own0, t0 = self._start
        ticks1, own1, t1 = self.sources.cpu_ticks(), self.sources.own_cpu(), self.sources.clock()
        seconds = max(t1 - t0, 1e-9)
        load = self.sources.load_average()
        other = steal = None
        if ticks0 is not None and ticks1 is not None:
            other = max(0.0, (ticks1[0] - ticks0[0]) - (own1 - own0)) / seconds
            steal = max(0.0, ticks1[1] - ticks0[1]) / seconds
        # without /proc/stat: the 1-minute load average minus the one core our own measurement keeps busy
        contended = (other > self.max_load or steal > self.max_load) if other is not None else load - 1 > self.max_load
        return {"other_cpu_cores": None if other is None else round(other, 3),
                "steal_cores": None if steal is None else round(steal, 3),
                "load_average_1m": round(load, 2), "seconds": round(seconds, 2), "contended": bool(contended)}

    def wait_for_quiet(self, timeout_s: float, probe_s: float = 1.0) -> dict[str, Any]:
        """Sample `probe_s` windows of an idle wait until one is below max_load or `timeout_s` passes; the last
        sample (its "contended" says whether the machine became quiet)."""
        deadline = self.sources.clock() + timeout_s
        while True:
            self.start()
            time.sleep(probe_s)
            sample = self.stop()
            if not sample["contended"] or self.sources.clock() >= deadline:
                return sample
