"""Sweep report: every DVC experiment (`dvc exp show --json`) as one row of knobs and results.

Sweeps themselves are DVC's: `dvc exp run --queue -S 'distill.alpha=0.1,0.5,0.9' -S
'distill.temperature=2,4'` queues the grid, `dvc queue start -j 2` runs it on parallel workers. This
module only reads what DVC recorded and draws accuracy against alpha, T and the prune ratio, plus the
accuracy-latency cloud of all experiments.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Iterator

import matplotlib.pyplot as plt

from edgecompress import EdgecompressError
from edgecompress.quantize.config import is_int8_variant
from edgecompress.plots import save_figure
from edgecompress.markdown import markdown_table

LATENCY_BATCH = "8"  # the batch the chain's goals use; the largest measured one when 8 was not


def _latency(variant: dict[str, Any]) -> tuple[str, float]:
    timings = variant["latency_ms"]
    batch = LATENCY_BATCH if LATENCY_BATCH in timings else max(timings, key=int)
    return batch, timings[batch]["median"]
KNOBS = (("distill", "alpha"), ("distill", "temperature"), ("prune", "ratio"))


def exp_show_json(repo: str | Path = ".") -> list[dict[str, Any]]:
    """`dvc exp show --json` of `repo`, parsed."""
    proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EdgecompressError(f"dvc exp show --json failed in {repo}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _revisions(shown: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for entry in shown:
        yield entry
        for experiment in entry.get("experiments") or []:
            yield from experiment.get("revs") or []


def _metric(data: dict[str, Any], file: str) -> dict[str, Any]:
    return (data.get("metrics", {}).get(file) or {}).get("data") or {}


def experiment_rows(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per revision with results (workspace, commits, experiments): the knobs from params.yaml,
    the distilled / pruned / best-INT8 accuracies and the best INT8 variant's latency at batch 8."""
    rows = []
    for rev in _revisions(shown):
        data = rev.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        distill, prune = _metric(data, "metrics/distill.json"), _metric(data, "metrics/prune.json")
        if not distill:
            continue
        variants = _metric(data, "metrics/benchmark.json").get("variants", {})
        int8 = {name: v for name, v in variants.items() if is_int8_variant(name) and "latency_ms" in v}
        best = max(int8, key=lambda n: (int8[n]["accuracy"], -_latency(int8[n])[1]), default=None)
        batch, latency = _latency(int8[best]) if best else (None, None)
        rows.append({
            "name": rev.get("name") or (rev["rev"] if rev.get("rev") == "workspace" else str(rev.get("rev", ""))[:7]),
            **{f"{block}.{key}": params.get(block, {}).get(key) for block, key in KNOBS},
            "distill_accuracy": distill.get("accuracy"), "prune_accuracy": prune.get("accuracy"),
            "best_int8": best, "int8_accuracy": int8[best]["accuracy"] if best else None,
            "int8_latency_ms": latency, "latency_batch": batch,
        })
    return rows


def plot_sweep(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Distilled accuracy vs alpha, T and prune ratio (pruned accuracy for the ratio), and best INT8
    accuracy vs its latency for every experiment."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, (knob, metric) in zip(axes, (("distill.alpha", "distill_accuracy"),
                                         ("distill.temperature", "distill_accuracy"),
                                         ("prune.ratio", "prune_accuracy"))):
        points = [(r[knob], 100 * r[metric]) for r in rows if r[knob] is not None and r[metric] is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#55a868", edgecolors="black")
        ax.set(xlabel=knob, ylabel=f"{metric.split('_')[0]} test accuracy (%)", title=f"accuracy vs {knob}")
        ax.grid(alpha=0.3)
    ax = axes[3]
    for r in rows:
        if r["int8_latency_ms"] is not None:
            ax.scatter(r["int8_latency_ms"], 100 * r["int8_accuracy"], color="#c44e52", edgecolors="black")
            ax.annotate(r["name"], (r["int8_latency_ms"], 100 * r["int8_accuracy"]), fontsize=6,
                        textcoords="offset points", xytext=(4, 3))
    batches = sorted({r["latency_batch"] for r in rows if r["latency_batch"]}, key=int)
    ax.set(xlabel=f"best INT8 variant latency (ms/sample, batch {'/'.join(batches)})", ylabel="its accuracy (%)",
           title="accuracy-latency of all experiments")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Sweep over {len(rows)} revisions (dvc exp show)", fontsize=10)
    save_figure(fig, path)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    def pct(value: float | None) -> str | None:
        return None if value is None else f"{100 * value:.2f}"

    return "\n".join(markdown_table(
        ["experiment", "alpha", "T", "prune ratio", "distilled %", "pruned %", "best INT8", "INT8 %",
         "INT8 ms/sample (batch)"],
        [[r["name"], r["distill.alpha"], r["distill.temperature"], r["prune.ratio"], pct(r["distill_accuracy"]),
          pct(r["prune_accuracy"]), r["best_int8"], pct(r["int8_accuracy"]),
          None if r["int8_latency_ms"] is None else f"{r['int8_latency_ms']:.3f} ({r['latency_batch']})"]
         for r in rows]))
