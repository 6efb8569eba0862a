"""Did another tenant share the CPU while we timed? (issue 16: measured while other jobs ran, the zoo
reported 229 ms/image for a 1 ms network, numbers that looked like results.)

`LoadMonitor` reads the kernel's CPU accounting (`/proc/stat`: busy and steal ticks of all cores) and
this process's own CPU time (itself and its waited-for children, e.g. the isolated benchmark runner)
before and after a measurement. What the machine spent beyond our own work is the other processes'
CPU, in cores; stolen time is the hypervisor giving our vCPUs to another VM. Either above
`bench.max_load` marks the measurement as taken under contention; the benchmark then waits for a quiet
machine and measures again (`bench.retries`), and the metrics and the report say which numbers are
still flagged. Where /proc/stat does not exist (macOS, Windows) the load average alone is used.

Every pipeline's timers share this: `LoadPolicy` is a params block's `max_load` / `retries` / `wait_s`
(`bench`, `zoo`, `detection`), `watched` runs one timed measurement under it, `contention_block` is
what a metrics file records, and `contended` / `contention_lines` are what its REPORT says.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

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


# ----------------------------------------------------------------------------------------------
# One timed measurement, retried while contended (the chain's benchmark, the zoo and detection timers)
@dataclass(frozen=True)
class LoadPolicy:
    """When a timed measurement counts as contended and what is done about it: the `max_load`,
    `retries` and `wait_s` keys of a params block. The default (max_load None) watches nothing, so a
    caller that passes no policy (a test, a monitoring pass whose times are not reported) never waits."""

    max_load: float | None = None  # other processes' or stolen CPU, in cores; None = not monitored
    retries: int = 0  # measurements repeated while contended, each after waiting up to wait_s for quiet
    wait_s: float = 0.0
    sources: LoadSources | None = field(default=None, compare=False)  # None = this machine (fakes in tests)

    @classmethod
    def of(cls, settings: Any, sources: LoadSources | None = None) -> "LoadPolicy":
        """The policy of a settings block that has max_load, retries and wait_s."""
        return cls(settings.max_load, settings.retries, settings.wait_s, sources)

    def to_dict(self) -> dict[str, Any]:
        """The three keys as a metrics file records them (the sources are no setting)."""
        return {"max_load": self.max_load, "retries": self.retries, "wait_s": self.wait_s}


def watched(measure: Callable[[], T], policy: LoadPolicy, label: str) -> tuple[T, dict[str, Any] | None]:
    """`measure()` with the machine's load recorded around it: taken under contention (`policy.max_load`),
    it is repeated up to `policy.retries` times after waiting up to `policy.wait_s` for a quiet machine,
    and the last result is kept, still flagged ("contended": true) when the machine never quietened.

    Returns:
        (the result, `LoadMonitor.stop()`'s record plus "attempts"; None when not monitored).
    """
    if policy.max_load is None:
        return measure(), None
    monitor = LoadMonitor(policy.max_load, policy.sources)
    for attempt in range(policy.retries + 1):
        if attempt:
            monitor.wait_for_quiet(policy.wait_s)
        monitor.start()
        result = measure()
        load = monitor.stop()
        if not load["contended"]:
            break
        log.warning("%s measured under contention (other processes %s cores, stolen %s cores)%s", label,
                    load["other_cpu_cores"], load["steal_cores"],
                    "; measuring again" if attempt < policy.retries else "")
    return result, {**load, "attempts": attempt + 1}


# ----------------------------------------------------------------------------------------------
# What the metrics and the REPORTs say
def contended(entries: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, load record) of every flagged measurement among `entries` ({label: metrics entry}): an
    entry's "load" is one record (the chain's variants, a detection row) or {batch size: record} (the
    zoo's latency sweeps, labelled "<label> b<batch>"); entries without one were not monitored."""
    flagged: list[tuple[str, dict[str, Any]]] = []
    for label, entry in entries.items():
        load = (entry or {}).get("load") if isinstance(entry, Mapping) else None
        if not load:
            continue
        records = [(label, load)] if "contended" in load else [(f"{label} b{b}", r) for b, r in load.items()]
        flagged += [(name, record) for name, record in records if record.get("contended")]
    return flagged


def contention_block(policy: LoadPolicy, entries: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics file's "contention": the policy it was measured under and the labels still flagged."""
    return {**policy.to_dict(), "contended": [label for label, _ in contended(entries)]}


def contention_lines(flagged: list[tuple[str, dict[str, Any]]], limit: float | None, *, setting: str,
                     what: str, notes: list[str] | None = None) -> list[str]:
    """The REPORT's word on contention: not monitored (`limit` None), every `what` quiet, or the flagged
    measurements named with their load. The advice that their latencies are not comparable goes to
    `notes` when the report collects notes, else on the same line."""
    if limit is None:
        return [f"Contention was not monitored ({setting}: null).", ""]
    if not flagged:
        return [f"Every {what} was measured on a quiet machine (other processes and stolen CPU ≤ {limit} cores).", ""]
    text = ", ".join(f"`{n}` ({load.get('other_cpu_cores')} cores other, {load.get('steal_cores')} stolen, "
                     f"{load.get('attempts')} attempts)" for n, load in flagged)
    advice = "Their latencies are not comparable; re-run on a quiet machine."
    line = f"**Under contention** (> {limit} cores of other processes or stolen CPU): {text}."
    if notes is None:
        return [f"{line} {advice}", ""]
    notes.append(f"Measured under contention (other processes or stolen CPU above {setting} = {limit} cores "
                 f"after every retry): {text}. {advice}")
    return [line, ""]


def pipeline_contention_lines(stages: Mapping[str, tuple[dict[str, Any] | None, Mapping[str, Any]]], *,
                              setting: str) -> list[str]:
    """`contention_lines` for the timed stages of one pipeline at once: {stage: (its metrics file's
    "contention" block, its timed entries as `contended` reads them)}, each flagged measurement named
    "<stage> <label>". Stages whose metrics have no block (written before the load was recorded) are left
    out, and with none left the REPORT says nothing."""
    recorded = {stage: (block, entries) for stage, (block, entries) in stages.items() if block is not None}
    if not recorded:
        return []
    limits = [block["max_load"] for block, _ in recorded.values() if block.get("max_load") is not None]
    flagged = [(f"{stage} {label}", record) for stage, (_, entries) in recorded.items()
               for label, record in contended(entries)]
    return contention_lines(flagged, limits[0] if limits else None, setting=setting, what="timing")
