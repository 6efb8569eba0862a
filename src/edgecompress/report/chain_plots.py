"""The benchmark's plots, written by the `benchmark` stage and embedded in REPORT.md: accuracy vs latency
with its Pareto front, accuracy/size/latency bars per variant, the batch-size analysis and the static
INT8 configs side by side."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Iterable

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from edgecompress.plots import pareto_front, save_figure
from edgecompress.quantize.config import VARIANTS, is_int8_variant, static_variants
from edgecompress.report.chain_metrics import batch_keys, latency, measured_entry, ordered_variants

STAGE_COLOURS = {"teacher": "#4c72b0", "student_baseline": "#8c8c8c", "distill": "#55a868", "prune": "#dd8452",
                 "quantize": "#c44e52"}
OTHER_COLOUR = "#937860"
PLOT_FILES = {"pareto": "pareto.png", "accuracy": "accuracy.png", "size": "size.png", "latency": "latency.png",
              "batch_size_analysis": "batch_size_analysis_combined.png",
              "static_quant_analysis": "static_quant_analysis.png"}
BATCH_MARKERS = ("o", "s", "^", "D", "v", "P")
DYNAMIC_NOTE = "dynamic quantization quantizes only Linear layers (Conv2d stays float)"


# Plots
def _colour(entry: dict) -> str:
    return STAGE_COLOURS.get(entry.get("stage", ""), OTHER_COLOUR)


def _stage_legend(stages: Iterable[str]) -> list[Patch]:
    seen = list(dict.fromkeys(stages))
    return [Patch(color=STAGE_COLOURS.get(s, OTHER_COLOUR), label=s) for s in seen]


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _log_if_spread(ax: Any, values: list[float], axis: str) -> None:
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.3, not 3x10^-1
        # minor labels at 2, 3 and 5 of each decade only, so they do not collide
        target.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))


def plot_pareto(bench: dict, path: str | Path) -> None:
    """Accuracy vs batch-1 per-sample latency, marker area proportional to size_mb, Pareto front drawn
    (lower latency and higher accuracy are better); log x axis when latencies spread over > 10x."""
    b1, _ = batch_keys(bench)
    rows = []
    for name in ordered_variants(bench):
        entry, lat = measured_entry(bench, name), latency(bench, name, b1)
        if entry is not None and lat is not None and entry.get("accuracy") is not None:
            rows.append((name, lat, 100 * entry["accuracy"], float(entry.get("size_mb") or 0), entry))
    fig, ax = plt.subplots(figsize=(9, 5.8))
    if rows:
        max_size = max(r[3] for r in rows) or 1.0
        front = pareto_front({r[0]: (r[1], r[2]) for r in rows}, keep_ties=False)
        by_name = {r[0]: r for r in rows}
        for i, (name, lat, acc, size, entry) in enumerate(sorted(rows, key=lambda r: r[1])):
            ax.scatter(lat, acc, s=max(8.0, 1500 * size / max_size), color=_colour(entry), alpha=0.6,
                       edgecolors="black", linewidths=1.8 if name in front else 0.6, zorder=3)
            ax.annotate(name, (lat, acc), xytext=(5, (8, -13, 18, -23)[i % 4]), textcoords="offset points",
                        fontsize=7, fontweight="bold" if name in front else "normal")
        # the front as a staircase between its own points (a one-point front is its bold marker alone)
        ax.step([by_name[n][1] for n in front], [by_name[n][2] for n in front], where="post", color="black",
                lw=1.2, ls="--", zorder=2)
        _log_if_spread(ax, [r[1] for r in rows], "x")
        accs = [r[2] for r in rows]
        pad = max(0.5, 0.15 * (max(accs) - min(accs)))
        ax.set_ylim(min(accs) - pad, max(accs) + pad)
        handles = _stage_legend(r[4].get("stage", "") for r in rows)
        handles.append(Line2D([], [], color="black", ls="--", label="Pareto front (bold)"))
        ax.legend(handles=handles, fontsize=8, loc="lower right", title="stage (area ∝ size MB)", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no measured variant", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel=f"latency at batch {b1} (ms/sample, median)", ylabel="test accuracy (%)",
           title="Accuracy vs latency (Pareto front: lower latency and higher accuracy)")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def _bar_axes(ax: Any, names: list[str]) -> None:
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")


def _mark_skipped(ax: Any, bench: dict, names: list[str]) -> None:
    for i, name in enumerate(names):
        entry = bench["variants"].get(name, {})
        if "skipped" in entry:
            ax.text(i, 0.02, _wrap(f"skipped: {entry['skipped']}", 24), rotation=90, ha="center", va="bottom",
                    fontsize=6, color="dimgray", transform=ax.get_xaxis_transform())


def plot_bars(bench: dict, plots_dir: str | Path) -> None:
    """plots_dir/accuracy.png, size.png and latency.png (batch 1 and 16 side by side, error bars span
    the IQR): one bar per variant, coloured by stage; skipped variants keep an empty, labelled slot."""
    plots_dir = Path(plots_dir)
    names = ordered_variants(bench)
    entries = [bench["variants"][n] for n in names]
    colours = [_colour(e) for e in entries]
    legend = _stage_legend(e.get("stage", "") for e in entries)
    width = max(7.0, 0.6 * len(names) + 2)

    def values(key: str) -> list[float]:
        return [float(e[key]) if "skipped" not in e and e.get(key) is not None else 0.0 for e in entries]

    def labelled_bars(heights: list[float], label_format: str, ylabel: str, title: str, file_key: str,
                      zoom_accuracy: bool = False) -> None:
        """One bar per variant with its value on top; skipped variants marked."""
        fig, ax = plt.subplots(figsize=(width, 4.2))
        ax.bar(range(len(names)), heights, color=colours, edgecolor="black", linewidth=0.5)
        measured = [h for h, e in zip(heights, entries) if "skipped" not in e]
        if zoom_accuracy and measured:  # accuracies differ by tenths of a point: a 0-based axis hides that
            ax.set_ylim(max(0.0, min(measured) - max(1.0, 0.2 * (max(measured) - min(measured)))),
                        min(100.0, max(measured)) + 0.6)
        elif not zoom_accuracy:
            _log_if_spread(ax, heights, "y")
        for i, (h, e) in enumerate(zip(heights, entries)):
            if "skipped" not in e:
                ax.text(i, h, format(h, label_format), ha="center", va="bottom", fontsize=7)
        _bar_axes(ax, names)
        _mark_skipped(ax, bench, names)
        ax.set(ylabel=ylabel, title=title)
        ax.legend(handles=legend, fontsize=7, title="stage", title_fontsize=7, bbox_to_anchor=(1.01, 1),
                  loc="upper left")
        save_figure(fig, plots_dir / PLOT_FILES[file_key])

    labelled_bars([100 * v for v in values("accuracy")], ".2f", "test accuracy (%) — axis zoomed, not from 0",
                  "Accuracy per variant", "accuracy", zoom_accuracy=True)
    labelled_bars(values("size_mb"), ".3g", "file size (MB)", "Model file size per variant", "size")

    # latency, batch 1 and the largest batch side by side
    fig, ax = plt.subplots(figsize=(width, 4.6))
    all_lat = []
    for offset, batch, hatch in ((-0.2, batch_keys(bench)[0], None), (0.2, batch_keys(bench)[1], "//")):
        med = [latency(bench, n, batch) or 0.0 for n in names]
        iqr = [(latency(bench, n, batch, "iqr") or 0.0) / 2 for n in names]
        all_lat += med
        ax.bar([i + offset for i in range(len(names))], med, width=0.4, yerr=iqr, capsize=2, color=colours,
               edgecolor="black", linewidth=0.5, hatch=hatch, error_kw={"elinewidth": 0.8})
    _log_if_spread(ax, all_lat, "y")
    _bar_axes(ax, names)
    _mark_skipped(ax, bench, names)
    b1, big = batch_keys(bench)
    handles = legend + [Patch(facecolor="white", edgecolor="black", label=f"batch {b1}"),
                        Patch(facecolor="white", edgecolor="black", hatch="//", label=f"batch {big}")]
    ax.legend(handles=handles, fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set(ylabel="latency (ms/sample, median; bars span the IQR)",
           title=f"Per-sample latency, batch {b1} vs batch {big}")
    save_figure(fig, plots_dir / PLOT_FILES["latency"])


def plot_batch_size_analysis(bench: dict, path: str | Path) -> None:
    """Left: accuracy vs per-sample inference time, one line per variant through its batch sizes
    (1/4/8/16). Right: per-sample latency vs batch size. Static INT8 solid, dynamic dashed, FP32 thin."""
    batches = [str(b) for b in bench.get("config", {}).get("batch_sizes") or (1, 4, 8, 16)]
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(13, 5.4))
    cmap = plt.get_cmap("tab20")
    all_lat = []
    for i, name in enumerate(ordered_variants(bench)):
        entry = measured_entry(bench, name)
        if entry is None or entry.get("accuracy") is None:
            continue
        pts = [(int(b), lat) for b in batches if (lat := latency(bench, name, b)) is not None]
        if not pts:
            continue
        all_lat += [p[1] for p in pts]
        style = {"ls": "--", "lw": 1.6} if name == "dynamic" else {"ls": "-", "lw": 2.0 if is_int8_variant(name) else 1.0}
        colour = cmap(i % 20)
        acc = 100 * entry["accuracy"]
        ax_acc.plot([p[1] for p in pts], [acc] * len(pts), color=colour, label=name, **style)
        for b, lat in pts:
            ax_acc.plot(lat, acc, marker=BATCH_MARKERS[batches.index(str(b)) % len(BATCH_MARKERS)], ms=5,
                        color=colour, mec="black", mew=0.4, ls="none")
        ax_lat.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=colour, label=name, **style)
    _log_if_spread(ax_acc, all_lat, "x")
    ax_acc.set(xlabel="inference time (ms/sample, median)", ylabel="test accuracy (%)",
               title="Accuracy vs per-sample time")
    ax_acc.legend(handles=[Line2D([], [], marker=BATCH_MARKERS[i % len(BATCH_MARKERS)], color="gray", ls="none",
                                  label=f"batch {b}") for i, b in enumerate(batches)], fontsize=7, loc="lower right")
    ax_lat.set_xscale("log", base=2)
    ax_lat.set_xticks([int(b) for b in batches], batches)
    _log_if_spread(ax_lat, all_lat, "y")
    ax_lat.set(xlabel="batch size", ylabel="ms/sample (median)", title="Per-sample latency vs batch size")
    for ax in (ax_acc, ax_lat):
        ax.grid(alpha=0.3, which="both")
    if ax_lat.lines:
        ax_lat.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    title = f"Batch-size analysis (batch {'/'.join(batches)})"
    if measured_entry(bench, "dynamic") is not None:
        title += f"\nstatic INT8: thick solid lines; dynamic (dashed): {DYNAMIC_NOTE}"
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_static_quant_analysis(bench: dict, path: str | Path) -> None:
    """Accuracy and batch-1/batch-16 latency of each static INT8 config (ptq_x86, ptq_fbgemm, ptq_qnnpack,
    ptq_custom) against FP32 pruned (eager); skipped or missing configs are shown with their reason."""
    names = ["pruned", *static_variants()]
    labels = ["pruned (FP32 eager)", *static_variants()]
    b1, big = batch_keys(bench)
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = ["#dd8452"] + ["#8172b2" if VARIANTS[n].options.get("qconfig") == "custom" else "#c44e52"
                             for n in static_variants()]
    acc = []
    for name in names:
        entry = measured_entry(bench, name)
        acc.append(100 * entry["accuracy"] if entry and entry.get("accuracy") is not None else 0.0)
    ax_acc.bar(range(len(names)), acc, color=colours, edgecolor="black", linewidth=0.5)
    measured = [a for a in acc if a > 0]
    if measured:
        ax_acc.set_ylim(max(0.0, min(measured) - 1.0), min(100.0, max(measured)) + 0.6)
    ref = measured_entry(bench, "pruned")
    if ref is not None and ref.get("accuracy") is not None:
        ax_acc.axhline(100 * ref["accuracy"], color="black", ls=":", lw=1, label="FP32 pruned")
        ax_acc.legend(fontsize=7, loc="lower right")
    for i, a in enumerate(acc):
        if a > 0:
            ax_acc.text(i, a, f"{a:.2f}", ha="center", va="bottom", fontsize=7)
    ax_acc.set(ylabel="test accuracy (%)", title="Accuracy")
    for offset, batch, hatch in ((-0.2, b1, None), (0.2, big, "//")):
        med = [latency(bench, n, batch) or 0.0 for n in names]
        iqr = [(latency(bench, n, batch, "iqr") or 0.0) / 2 for n in names]
        ax_lat.bar([i + offset for i in range(len(names))], med, width=0.4, yerr=iqr, capsize=2, color=colours,
                   edgecolor="black", linewidth=0.5, hatch=hatch, label=f"batch {batch}")
    ax_lat.legend(fontsize=7)
    ax_lat.set(ylabel="ms/sample (median; bars span the IQR)", title=f"Latency, batch {b1} and {big}")
    for ax in (ax_acc, ax_lat):
        ax.set_xticks(range(len(names)), labels, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        for i, name in enumerate(names):
            entry = bench["variants"].get(name)
            reason = "not benchmarked" if entry is None else (
                f"skipped: {entry['skipped']}" if "skipped" in entry else None)
            if reason:
                ax.text(i, 0.03, _wrap(reason, 26), rotation=90, ha="center", va="bottom", fontsize=7,
                        color="dimgray", transform=ax.get_xaxis_transform())
    fig.suptitle("Static INT8 quantization configs vs FP32 pruned (eager)", fontsize=10)
    save_figure(fig, path)


def write_plots(bench: dict, plots_dir: str | Path) -> dict[str, Path]:
    """Every report plot under `plots_dir`; returns {plot key: path} (keys of PLOT_FILES)."""
    plots_dir = Path(plots_dir)
    paths = {key: plots_dir / name for key, name in PLOT_FILES.items()}
    plot_pareto(bench, paths["pareto"])
    plot_bars(bench, plots_dir)
    plot_batch_size_analysis(bench, paths["batch_size_analysis"])
    plot_static_quant_analysis(bench, paths["static_quant_analysis"])
    return paths
