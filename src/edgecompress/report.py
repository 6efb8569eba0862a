"""The `report` stage's content: REPORT.md and the benchmark plots, computed from the metrics files only.

Every number in the report is read from `metrics/{teacher,student_baseline,distill,prune,quantize,
benchmark}.json` (or derived from them: ratios, differences); nothing is typed by hand. Latencies are
per-sample milliseconds (`latency_ms`, median and IQR over the benchmark's repeats).

Variant families in `benchmark.json`:
- FP32 runtimes of the pruned model: `pruned` (eager), `pruned_compiled`, `onnx_fp32`;
- fully INT8 variants: `ptq_*`, `qat`, `onnx_int8` (`dynamic` quantizes only Linear layers: not INT8 end
  to end, so it never counts as "the best INT8 variant");
- a skipped variant holds only `stage` and `skipped` (the reason).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from edgecompress import EdgecompressError
from edgecompress.bench import is_int8_variant
from edgecompress.goals import target
from edgecompress.io import read_json, write_text
from edgecompress.plots import save_figure

METRICS_FILES = ("teacher", "student_baseline", "distill", "prune", "quantize", "benchmark")
VARIANT_ORDER = ("teacher", "student_baseline", "student", "pruned", "pruned_compiled", "pruned_fp16", "ptq_x86", "ptq_fbgemm",
                 "ptq_qnnpack", "ptq_custom", "dynamic", "fp16", "qat", "onnx_fp32", "onnx_int8")
FP32_RUNTIMES = ("pruned", "pruned_compiled", "onnx_fp32")
STATIC_CONFIGS = ("ptq_x86", "ptq_fbgemm", "ptq_qnnpack", "ptq_custom")
STAGE_COLOURS = {"teacher": "#4c72b0", "student_baseline": "#8c8c8c", "distill": "#55a868", "prune": "#dd8452",
                 "quantize": "#c44e52"}
OTHER_COLOUR = "#937860"
PLOT_FILES = {"pareto": "pareto.png", "accuracy": "accuracy.png", "size": "size.png", "latency": "latency.png",
              "batch_size_analysis": "batch_size_analysis_combined.png",
              "static_quant_analysis": "static_quant_analysis.png"}
SECTIONS = ("Summary", "Results", "Knowledge distillation", "Pruning", "Quantization", "Speedups", "Goals",
            "Parameters used", "Environment and roofline", "Plots", "Notes")
BATCH_MARKERS = ("o", "s", "^", "D", "v", "P")
DYNAMIC_NOTE = "dynamic quantization quantizes only Linear layers (Conv2d stays float)"


# ----------------------------------------------------------------------------------------------
# Loading and selection
def load_metrics(metrics_dir: str | Path) -> dict[str, dict]:
    """Read every metrics file the report needs.

    Returns:
        {"teacher", "student_baseline", "distill", "prune", "quantize", "benchmark"} -> parsed JSON.
    Raises:
        EdgecompressError: naming the file that is missing or malformed.
    """
    metrics_dir = Path(metrics_dir)
    out = {name: read_json(metrics_dir / f"{name}.json") for name in METRICS_FILES}
    for name, data in out.items():
        if not isinstance(data, dict):
            raise EdgecompressError(f"{metrics_dir / f'{name}.json'}: expected a JSON object")
    if not isinstance(out["benchmark"].get("variants"), dict):
        raise EdgecompressError(f"{metrics_dir / 'benchmark.json'}: no 'variants' mapping")
    if not isinstance(out["quantize"].get("variants"), dict):
        raise EdgecompressError(f"{metrics_dir / 'quantize.json'}: no 'variants' mapping")
    return out


def ordered_variants(bench: dict) -> list[str]:
    """Variant names of `bench`, in pipeline order (unknown names last, in file order)."""
    names = list(bench["variants"])
    return [n for n in VARIANT_ORDER if n in names] + [n for n in names if n not in VARIANT_ORDER]


def _measured(bench: dict, name: str) -> dict | None:
    entry = bench["variants"].get(name)
    return None if entry is None or "skipped" in entry else entry


def _latency(bench: dict, name: str, batch: str, key: str = "median") -> float | None:
    entry = _measured(bench, name)
    if entry is None:
        return None
    value = entry.get("latency_ms", {}).get(str(batch), {}).get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def _fastest(bench: dict, names: Iterable[str], batch: str) -> str | None:
    """The name with the lowest per-sample median latency at `batch` (skipped/unmeasured ones ignored)."""
    timed = [(lat, n) for n in names if (lat := _latency(bench, n, batch)) is not None]
    return min(timed)[1] if timed else None


def _ratio(reference: float | None, value: float | None) -> float | None:
    if reference is None or value is None or value <= 0:
        return None
    return reference / value


def _batches(bench: dict) -> tuple[str, str]:
    """The smallest and largest benchmarked batch sizes as keys (normally "1" and "16")."""
    sizes = bench.get("config", {}).get("batch_sizes") or [1, 16]
    return str(min(sizes)), str(max(sizes))


# ----------------------------------------------------------------------------------------------
# Derived numbers
def speedups(bench: dict, batch: str = "8") -> dict:
    """Per-sample latency speedups at one batch size, for every measured variant.

    Returns:
        {variant: {"latency_ms", "vs_pruned_eager", "vs_best_fp32", "best_fp32", "vs_teacher"}}: a speedup is
        reference latency / variant latency (> 1 = faster); the best FP32 runtime is the fastest of
        pruned, pruned_compiled and onnx_fp32 at that batch. A speedup whose reference was not measured
        is None. Skipped variants (and ones without a latency at `batch`) are left out.
    """
    batch = str(batch)
    best = _fastest(bench, FP32_RUNTIMES, batch)
    refs = {"vs_pruned_eager": _latency(bench, "pruned", batch),
            "vs_best_fp32": _latency(bench, best, batch) if best else None,
            "vs_teacher": _latency(bench, "teacher", batch)}
    out = {}
    for name in ordered_variants(bench):
        lat = _latency(bench, name, batch)
        if lat is None:
            continue
        out[name] = {"latency_ms": lat, **{k: _ratio(ref, lat) for k, ref in refs.items()}, "best_fp32": best}
    return out


def _goal(value: float | None, goal: str, variant: str | None, reference: str | None, **bound: float) -> dict:
    entry = {"value": None, "goal": goal, "met": False} if value is None else target(value, goal=goal, **bound)
    return {**entry, "variant": variant, "reference": reference}


def performance_goals(bench: dict) -> dict:
    """The project's latency/size/accuracy goals for the final chain, from `benchmark.json`.

    The final chain is the best INT8 variant: the lowest batch-8 per-sample latency among ptq_*, qat and
    onnx_int8. Each entry is goals.target()'s {"value", "goal", "met"} plus "variant" (the INT8 variant
    used) and "reference" (what it is compared with); when a side was not measured, value is None and
    met is False.
    """
    b = "8"
    best = _fastest(bench, [n for n in bench["variants"] if is_int8_variant(n)], b)
    fp32 = _fastest(bench, FP32_RUNTIMES, b)
    lat = _latency(bench, best, b) if best else None
    final = _measured(bench, best) if best else None
    teacher = _measured(bench, "teacher")

    def field(entry: dict | None, key: str) -> float | None:
        return None if entry is None or entry.get(key) is None else float(entry[key])

    acc_loss = None
    if field(teacher, "accuracy") is not None and field(final, "accuracy") is not None:
        acc_loss = 100 * (field(teacher, "accuracy") - field(final, "accuracy"))
    return {
        "int8_speedup_vs_pruned_eager": _goal(
            _ratio(_latency(bench, "pruned", b), lat), ">= 3x lower latency than eager FP32 pruned (batch 8)",
            best, "pruned", at_least=3.0),
        "int8_speedup_vs_best_fp32": _goal(
            _ratio(_latency(bench, fp32, b) if fp32 else None, lat),
            f">= 1.5x lower latency than the best FP32 runtime ({fp32 or 'none measured'}, batch 8)",
            best, fp32, at_least=1.5),
        "final_speedup_vs_teacher": _goal(
            _ratio(_latency(bench, "teacher", b), lat), ">= 8x lower latency than the teacher (batch 8)",
            best, "teacher", at_least=8.0),
        "final_size_reduction_vs_teacher": _goal(
            _ratio(field(teacher, "size_mb"), field(final, "size_mb")), ">= 10x smaller than the teacher (size_mb)",
            best, "teacher", at_least=10.0),
        "final_accuracy_loss_points": _goal(
            acc_loss, "<= 1.5 points of accuracy lost vs the teacher", best, "teacher", at_most=1.5),
    }


# ----------------------------------------------------------------------------------------------
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


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the Pareto front of (name, latency, accuracy): no other point has lower-or-equal
    latency and higher-or-equal accuracy with at least one strictly better. Ordered by latency."""
    front, best_acc = [], -math.inf
    for name, _, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best_acc:
            front.append(name)
            best_acc = acc
    return front


def plot_pareto(bench: dict, path: str | Path) -> None:
    """Accuracy vs batch-1 per-sample latency, marker area proportional to size_mb, Pareto front drawn
    (lower latency and higher accuracy are better); log x axis when latencies spread over > 10x."""
    b1, _ = _batches(bench)
    rows = []
    for name in ordered_variants(bench):
        entry, lat = _measured(bench, name), _latency(bench, name, b1)
        if entry is not None and lat is not None and entry.get("accuracy") is not None:
            rows.append((name, lat, 100 * entry["accuracy"], float(entry.get("size_mb") or 0), entry))
    fig, ax = plt.subplots(figsize=(9, 5.8))
    if rows:
        max_size = max(r[3] for r in rows) or 1.0
        front = pareto_front([(r[0], r[1], r[2]) for r in rows])
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
    for offset, batch, hatch in ((-0.2, _batches(bench)[0], None), (0.2, _batches(bench)[1], "//")):
        med = [_latency(bench, n, batch) or 0.0 for n in names]
        iqr = [(_latency(bench, n, batch, "iqr") or 0.0) / 2 for n in names]
        all_lat += med
        ax.bar([i + offset for i in range(len(names))], med, width=0.4, yerr=iqr, capsize=2, color=colours,
               edgecolor="black", linewidth=0.5, hatch=hatch, error_kw={"elinewidth": 0.8})
    _log_if_spread(ax, all_lat, "y")
    _bar_axes(ax, names)
    _mark_skipped(ax, bench, names)
    b1, big = _batches(bench)
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
        entry = _measured(bench, name)
        if entry is None or entry.get("accuracy") is None:
            continue
        pts = [(int(b), lat) for b in batches if (lat := _latency(bench, name, b)) is not None]
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
    if _measured(bench, "dynamic") is not None:
        title += f"\nstatic INT8: thick solid lines; dynamic (dashed): {DYNAMIC_NOTE}"
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_static_quant_analysis(bench: dict, path: str | Path) -> None:
    """Accuracy and batch-1/batch-16 latency of each static INT8 config (ptq_x86, ptq_fbgemm, ptq_qnnpack,
    ptq_custom) against FP32 pruned (eager); skipped or missing configs are shown with their reason."""
    names = ["pruned", *STATIC_CONFIGS]
    labels = ["pruned (FP32 eager)", *STATIC_CONFIGS]
    b1, big = _batches(bench)
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = ["#dd8452", "#c44e52", "#c44e52", "#c44e52", "#8172b2"]
    acc = []
    for name in names:
        entry = _measured(bench, name)
        acc.append(100 * entry["accuracy"] if entry and entry.get("accuracy") is not None else 0.0)
    ax_acc.bar(range(len(names)), acc, color=colours, edgecolor="black", linewidth=0.5)
    measured = [a for a in acc if a > 0]
    if measured:
        ax_acc.set_ylim(max(0.0, min(measured) - 1.0), min(100.0, max(measured)) + 0.6)
    ref = _measured(bench, "pruned")
    if ref is not None and ref.get("accuracy") is not None:
        ax_acc.axhline(100 * ref["accuracy"], color="black", ls=":", lw=1, label="FP32 pruned")
        ax_acc.legend(fontsize=7, loc="lower right")
    for i, a in enumerate(acc):
        if a > 0:
            ax_acc.text(i, a, f"{a:.2f}", ha="center", va="bottom", fontsize=7)
    ax_acc.set(ylabel="test accuracy (%)", title="Accuracy")
    for offset, batch, hatch in ((-0.2, b1, None), (0.2, big, "//")):
        med = [_latency(bench, n, batch) or 0.0 for n in names]
        iqr = [(_latency(bench, n, batch, "iqr") or 0.0) / 2 for n in names]
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


# ----------------------------------------------------------------------------------------------
# Markdown helpers
def _cell(value: Any) -> str:
    """A table cell: None/NaN as an em dash, booleans as yes/no, lists joined, pipes escaped."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines (and a blank line after) with cells formatted by `_cell`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _pct(acc: float | None) -> str | None:
    return None if acc is None else f"{100 * acc:.2f}"


def _points(delta: float) -> str:
    delta = round(delta, 2)
    return f"{0.0 if delta == 0 else delta:+.2f}"


def _times(ratio: float | None, digits: int = 2) -> str | None:
    return None if ratio is None else f"{ratio:.{digits}f}×"


def _ms(bench: dict, name: str, batch: str) -> str | None:
    med, iqr = _latency(bench, name, batch), _latency(bench, name, batch, "iqr")
    if med is None:
        return None
    return f"{med:.3f} ± {iqr:.3f}" if iqr is not None else f"{med:.3f}"


def _ms_value(bench: dict, name: str | None, batch: str) -> str:
    value = _latency(bench, name, batch) if name else None
    return "not measured" if value is None else f"{value:.3f}"


def _num(value: float | None) -> str:
    return "not measured" if value is None else f"{value + 0.0:.4g}"  # + 0.0: prints -0.0 as 0


def _int(value: Any) -> str | None:
    return None if value is None else f"{int(value):,}"


def _arch(metrics: dict) -> str:
    return f"{metrics.get('arch', '?')} w{metrics.get('width', '?')}"


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _layer_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _settings(settings: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {_cell(v)}" for k, v in settings.items() if k != "note") or "—"


def _dataset(params: Mapping[str, Any], bench: dict) -> str:
    """'**name** (N images: a train / b val / c test)' from params["dataset"] (a prepared meta.json) or
    benchmark.json["data"], else the name (and cap) from params["data"]."""
    meta = params.get("dataset") or bench.get("data") or {}
    data = params.get("data") or {}
    name = meta.get("name") or data.get("name")
    text = f"**{name}**" if name else "the configured data set"
    splits = meta.get("splits")
    if isinstance(splits, dict) and splits:
        parts = " / ".join(f"{v:,} {k}" for k, v in splits.items())
        text += f" ({sum(splits.values()):,} images: {parts})"
    elif data.get("max_samples"):
        text += f" (capped at {int(data['max_samples']):,} images by data.max_samples)"
    return text


def _param_mismatches(params: Mapping[str, Any], used: list[tuple[str, str, Any]]) -> list[str]:
    """Notes for params.yaml values that differ from the ones recorded in the metrics."""
    notes = []
    for block, key, recorded in used:
        current = (params.get(block) or {}).get(key, recorded)
        if isinstance(current, (list, tuple)) and isinstance(recorded, (list, tuple)):
            same = list(current) == list(recorded)
        else:
            same = current == recorded
        if not same:
            notes.append(f"params `{block}.{key}` is {_cell(current)} but the metrics were produced with "
                         f"{_cell(recorded)}: re-run the pipeline (`dvc repro`) before trusting this report.")
    return notes


# ----------------------------------------------------------------------------------------------
# The report
def build_report(metrics_dir: str | Path, plots_dir: str | Path, out_path: str | Path, *, params: dict) -> str:
    """Write REPORT.md to `out_path` (atomically) from the metrics files; return the markdown.

    The plots are written by the benchmark stage (`write_plots`); the report embeds them with paths
    relative to `out_path`.

    Args:
        metrics_dir: folder with teacher/student_baseline/distill/prune/quantize/benchmark.json.
        plots_dir: where the six benchmark plots are.
        out_path: the markdown file.
        params: params.yaml as a mapping: data.name (and data.max_samples) name the data set; an optional
            "dataset" entry (the prepared data's meta.json: name, splits) gives the image counts. Values
            that differ from those recorded in the metrics are flagged in the notes.
    Raises:
        EdgecompressError: a metrics file or plot is missing or malformed (the message names it).
    """
    metrics = load_metrics(metrics_dir)
    out_path, plots_dir = Path(out_path), Path(plots_dir)
    plot_paths = {key: plots_dir / name for key, name in PLOT_FILES.items()}
    for path in plot_paths.values():
        if not path.is_file():
            raise EdgecompressError(f"{path}: plot not found (written by the benchmark stage)")
    text = render_report(metrics, params or {}, {k: _rel(p, out_path.parent) for k, p in plot_paths.items()})
    write_text(out_path, text)
    return text


def render_report(metrics: dict[str, dict], params: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """REPORT.md text from `load_metrics` output; `plots` maps PLOT_FILES keys to relative paths."""
    teacher, baseline, distill = metrics["teacher"], metrics["student_baseline"], metrics["distill"]
    prune, quant, bench = metrics["prune"], metrics["quantize"], metrics["benchmark"]
    qvars, bvars = quant["variants"], bench["variants"]
    b1, big = _batches(bench)
    notes: list[str] = []
    goals = performance_goals(bench)
    final = goals["final_speedup_vs_teacher"]["variant"]
    sp1, sp8 = speedups(bench, b1), speedups(bench, "8")
    t_size = (_measured(bench, "teacher") or {}).get("size_mb", teacher.get("size_mb"))
    out: list[str] = ["# edgecompress report", ""]

    # 1. summary
    out += [f"## {SECTIONS[0]}", ""]
    summary = (f"Data set: {_dataset(params, bench)}. The teacher ({_arch(teacher)}, {teacher['params']:,} "
               f"parameters) reaches {_pct(teacher['accuracy'])}% test accuracy. The compressed chain distils it "
               f"into a {_arch(distill)} student ({_pct(distill['accuracy'])}%), prunes {prune.get('ratio')} of "
               f"the channels per group by {prune.get('importance')} importance "
               f"({prune['params_before']:,} → {prune['params_after']:,} parameters, "
               f"{_pct(prune['accuracy'])}% after fine-tuning)")
    if final:
        fe = bvars[final]
        summary += (f" and quantizes it; the fastest fully INT8 variant, `{final}`, reaches "
                    f"{_pct(fe['accuracy'])}% ({_points(100 * (fe['accuracy'] - teacher['accuracy']))} points vs "
                    f"the teacher), runs at {_latency(bench, final, '8'):.3f} ms/sample at batch 8 vs "
                    f"{_ms_value(bench, 'teacher', '8')} ms for the teacher "
                    f"({_times(goals['final_speedup_vs_teacher']['value'], 1) or 'not measured'} faster) and is "
                    f"{_times(goals['final_size_reduction_vs_teacher']['value'], 1) or 'not measured'} smaller "
                    f"({fe['size_mb']} MB vs {t_size} MB).")
    else:
        summary += ". No fully INT8 variant was benchmarked, so the final chain ends at the pruned FP32 model."
        notes.append("No fully INT8 variant (ptq_*, qat, onnx_int8) was measured in benchmark.json: the "
                      "performance goals are reported as not met.")
    met = sum(g["met"] for g in _all_goals(prune, quant, goals))
    summary += f" {met} of {len(_all_goals(prune, quant, goals))} goals are met (see Goals)."
    out += [summary, ""]

    # 2. results
    out += [f"## {SECTIONS[1]}", "",
            f"Latency is per sample (median ± IQR over at least {bench.get('config', {}).get('repeats', '?')} "
            f"timed calls and {bench.get('config', {}).get('min_time_s', 0)} s per batch size); "
            f"speedup is teacher latency / variant latency at batch {b1}; size reduction is teacher size / "
            "variant size.", ""]
    rows = []
    arch_of = {"teacher": _arch(teacher), "student_baseline": _arch(baseline), "student": _arch(distill)}
    for name in ordered_variants(bench):
        entry = bvars[name]
        if "skipped" in entry:
            rows.append([entry.get("stage"), f"`{name}`", f"skipped: {entry['skipped']}"] + [None] * 8)
            notes.append(f"Benchmark variant `{name}` was skipped: {entry['skipped']}.")
            continue
        model = arch_of.get(name, f"{_arch(prune)}, pruned")
        model += f" · {entry.get('format', '?')}"
        size = entry.get("size_mb")
        # TorchScript/ONNX artifacts are not counted by the benchmark: same network as prune.json's model
        derived = name not in arch_of
        n_params = entry.get("params") if entry.get("params") is not None or not derived else prune.get("params")
        n_macs = entry.get("macs") if entry.get("macs") is not None or not derived else prune.get("macs")
        rows.append([entry.get("stage"), f"`{name}`", model,
                     None if n_params is None else f"{n_params / 1e6:.3f}",
                     None if n_macs is None else f"{n_macs / 1e6:.2f}",
                     size, _pct(entry.get("accuracy")), _ms(bench, name, b1), _ms(bench, name, big),
                     _times((sp1.get(name) or {}).get("vs_teacher")), _times(_ratio(t_size, size))])
    out += markdown_table(["Stage", "Variant", "Model", "Params (M)", "MACs (M)", "Size (MB)", "Accuracy (%)",
                   f"ms/sample b{b1}", f"ms/sample b{big}", f"Speedup vs teacher (b{b1})",
                   "Size reduction vs teacher"], rows)

    # 3. knowledge distillation
    gain = 100 * (distill["accuracy"] - baseline["accuracy"])
    out += [f"## {SECTIONS[2]}", "",
            f"Loss: alpha·T²·KL(teacher‖student at T) + (1 − alpha)·CE with alpha = {distill.get('alpha')} and "
            f"T = {distill.get('temperature')}; the baseline trains the same {_arch(baseline)} student with "
            f"the same epochs ({baseline.get('epochs')}) and no teacher.", ""]
    out += markdown_table(["Model", "Test accuracy (%)", "Val accuracy (%)"], [
        ["teacher", _pct(teacher["accuracy"]), _pct(teacher.get("val_accuracy"))],
        ["student, no teacher (baseline)", _pct(baseline["accuracy"]), _pct(baseline.get("val_accuracy"))],
        ["student, distilled", _pct(distill["accuracy"]), _pct(distill.get("val_accuracy"))]])
    if round(gain, 2) > 0:
        out += [f"KD gain: **{_points(gain)} points** of test accuracy over the no-teacher baseline.", ""]
    else:
        out += [f"KD gain: **{_points(gain)} points**. KD did not help here: the distilled student is not more "
                "accurate than the baseline trained without a teacher.", ""]
        notes.append(f"Knowledge distillation did not help: {_points(gain)} points vs the no-teacher baseline.")

    # 4. pruning
    out += [f"## {SECTIONS[3]}", "",
            f"Structured channel pruning (channels physically removed) of the distilled student: ratio "
            f"{prune.get('ratio')} per group, {prune.get('importance')} importance, global ranking "
            f"{_cell(prune.get('global'))}, {prune.get('iterative_steps')} step(s); fine-tuned "
            f"{prune.get('epochs')} epochs{' with the distillation loss' if prune.get('finetune_kd') else ''}.",
            ""]
    prune_rows = []
    for label, key in (("channels", "channels"), ("parameters", "params"), ("MACs", "macs")):
        before, after = prune.get(f"{key}_before"), prune.get(f"{key}_after")
        removed = prune.get({"channels": "channel_ratio_removed", "params": "param_ratio_removed",
                             "macs": "mac_ratio_removed"}[key])
        prune_rows.append([label, _int(before), _int(after),
                           None if removed is None else f"{100 * removed:.1f}%"])
    out += markdown_table(["", "Before", "After", "Removed"], prune_rows)
    out += markdown_table(["Accuracy (%)", "Value"], [
        ["distilled student (unpruned)", _pct(prune.get("accuracy_unpruned"))],
        ["right after pruning (no fine-tuning)", _pct(prune.get("accuracy_after_pruning"))],
        ["after fine-tuning", _pct(prune["accuracy"])]])

    # 5. quantization
    fp32 = qvars.get("fp32", {})
    out += [f"## {SECTIONS[4]}", "",
            f"Every variant is reloaded from its artifact and evaluated on the test split; deltas and agreement "
            f"(same predicted class) are against the FP32 pruned model ({_pct(fp32.get('accuracy'))}%, "
            f"{fp32.get('size_mb')} MB file, {fp32.get('weights_mb')} MB weights).", ""]
    qrows = []
    for name, entry in qvars.items():
        if name == "fp32":
            continue
        if "skipped" in entry:
            qrows.append([f"`{name}`", f"skipped: {entry['skipped']}"] + [None] * 6)
            notes.append(f"Quantization variant `{name}` was skipped: {entry['skipped']}.")
            continue
        layers = entry.get("layers", {})
        qrows.append([f"`{name}`", _pct(entry.get("accuracy")), _points(entry["accuracy_delta_points"])
                      if entry.get("accuracy_delta_points") is not None else None,
                      _pct(entry.get("agreement_with_fp32")), entry.get("size_mb"), entry.get("weights_mb"),
                      f"{layers.get('quantized', '?')} / {layers.get('float', '?')}",
                      _settings(entry.get("settings", {}))])
    out += markdown_table(["Variant", "Accuracy (%)", "Δ vs FP32 (points)", "Agreement with FP32 (%)", "Size (MB)",
                   "Weights (MB)", "Quantized / float layers", "Settings"], qrows)
    qnotes = []
    dyn = qvars.get("dynamic", {})
    if "layers" in dyn:
        lay = dyn["layers"]
        line = (f"Dynamic quantization: {lay.get('quantized')} layer(s) quantized "
                f"({_layer_counts(lay.get('quantized_layers', {}))}), {lay.get('float')} left in float "
                f"({_layer_counts(lay.get('float_layers', {}))}).")
        if lay.get("float_layers", {}).get("Conv2d"):
            line += (" PyTorch dynamic quantization covers Linear (and RNN) layers only, so every Conv2d stays "
                     "float32: this variant is not INT8 end to end.")
            notes.append(f"Dynamic quantization does not apply to Conv2d: {lay['float_layers']['Conv2d']} Conv2d "
                         "layers stay float32.")
        qnotes.append(line)
    fp16 = qvars.get("fp16", {})
    if "settings" in fp16:
        qnotes.append(f"FP16 compute mode: {fp16['settings'].get('compute', 'not recorded')}.")
    onnx = qvars.get("onnx_fp32", {})
    if onnx.get("max_abs_logit_diff_vs_torch") is not None:
        qnotes.append(f"ONNX FP32 vs PyTorch FP32: max |logit difference| = "
                      f"{onnx['max_abs_logit_diff_vs_torch']:.3g} on the calibration inputs.")
    ts = [(n, e) for n, e in qvars.items() if n != "fp32" and str(e.get("artifact", "")).endswith(".ts")
          and e.get("weights_mb") is not None and "skipped" not in e]
    if ts and fp32.get("weights_mb") and fp32.get("size_mb"):
        ratios = ", ".join(f"`{n}` {e['size_mb'] / fp32['size_mb']:.2f} file / "
                           f"{e['weights_mb'] / fp32['weights_mb']:.2f} weights" for n, e in ts)
        qnotes.append(f"Size ratios: a TorchScript file holds serialized code and metadata beside the weights "
                      f"(the FP32 file is {fp32['size_mb']} MB for {fp32['weights_mb']} MB of weights); on a model "
                      f"this small that fixed part weighs, so file-size ratios understate the weight compression. "
                      f"Ratio vs FP32, file / weights payload: {ratios}.")
    out += [f"- {n}" for n in qnotes] + ([""] if qnotes else [])

    # 6. speedups
    best_fp32 = next((v["best_fp32"] for v in sp8.values() if v.get("best_fp32")), None)
    out += [f"## {SECTIONS[5]}", "",
            f"Per-sample latency at batch 8; a speedup is reference latency / variant latency. References: eager "
            f"FP32 `pruned` ({_ms_value(bench, 'pruned', '8')} ms), the best FP32 runtime "
            f"`{best_fp32 or 'none'}` ({_ms_value(bench, best_fp32, '8')} ms) and the teacher "
            f"({_ms_value(bench, 'teacher', '8')} ms).", ""]
    out += markdown_table(["Variant", "ms/sample b8", "vs eager FP32 pruned", "vs best FP32 runtime", "vs teacher"],
                  [[f"`{n}`", _ms(bench, n, "8"), _times(v["vs_pruned_eager"]), _times(v["vs_best_fp32"]),
                    _times(v["vs_teacher"])] for n, v in sp8.items()])

    # 7. goals
    out += [f"## {SECTIONS[6]}", ""]
    goal_rows, missed = [], []
    for source, key, g in _all_goals(prune, quant, goals, with_source=True):
        label = f"`{key}`" + (f" (`{g['variant']}`)" if g.get("variant") else "")
        goal_rows.append([source, label, g.get("goal"), _num(g.get("value")), "✅" if g.get("met") else "❌"])
        if not g.get("met"):
            missed.append(f"Goal `{key}` not met: {_num(g.get('value'))} (goal: {g.get('goal')}).")
    for name, data in (("prune.json", prune), ("quantize.json", quant)):
        if "targets" not in data:
            notes.append(f"{name} records no targets: its goals are missing from this report (re-run that stage).")
    out += markdown_table(["Source", "Goal", "Target", "Value", "Met"], goal_rows)
    out += ([f"**Not met ({len(missed)}):**", ""] + [f"- {m}" for m in missed] + [""]) if missed else \
        [f"All {len(goal_rows)} goals are met.", ""]
    if missed:
        notes.append(f"{len(missed)} goal(s) not met; the Goals section lists each with its number.")

    # 8. params used
    qcfg = quant.get("config", {})
    used = [("distill", "alpha", distill.get("alpha")), ("distill", "temperature", distill.get("temperature")),
            ("prune", "ratio", prune.get("ratio")), ("prune", "importance", prune.get("importance")),
            ("prune", "global", prune.get("global")), ("prune", "iterative_steps", prune.get("iterative_steps")),
            ("prune", "finetune_kd", prune.get("finetune_kd")),
            ("quantize", "backends", qcfg.get("backends")),
            ("quantize", "calibration_samples", qcfg.get("calibration_samples")),
            ("quantize", "calibration_batch_size", qcfg.get("calibration_batch_size")),
            ("quantize", "qat_epochs", qcfg.get("qat_epochs"))]
    used = [u for u in used if u[2] is not None]
    bench_cfg = [("benchmark", k, v) for k, v in bench.get("config", {}).items()]
    out += [f"## {SECTIONS[7]}", "", "As recorded in the metrics files (what produced these numbers).", ""]
    out += markdown_table(["Block", "Key", "Value"], [list(u) for u in used + bench_cfg])
    notes += _param_mismatches(params, used)

    # 9. environment and roofline
    env, roof = bench.get("environment", {}), bench.get("roofline", {})
    out += [f"## {SECTIONS[8]}", ""]
    out += markdown_table(["Key", "Value"], [[k, v] for k, v in env.items()])
    if roof:
        where = roof.get("device") or f"{roof.get('threads', '?')} thread(s)"
        out += [f"Roofline (measured peak, {where}, {roof.get('size', '?')}² matmul): "
                f"FP32 {_gmacs(roof.get('fp32_gmacs'))}"
                + (f", FP16 {_gmacs(roof['fp16_gmacs'])}" if roof.get("fp16_gmacs") else "")
                + f", INT8 {_gmacs(roof.get('int8_gmacs'))}"
                + (f" ({roof['int8_method']})" if roof.get("int8_method") else "") + ".", ""]
    roof_rows = []
    for name in ordered_variants(bench):
        entry = _measured(bench, name)
        if entry is None:
            continue
        gm, rf = entry.get("achieved_gmacs", {}), entry.get("roofline_fraction", {})
        roof_rows.append([f"`{name}`", gm.get(b1), _pct_or_none(rf.get(b1)), gm.get(big),
                          _pct_or_none(rf.get(big)), entry.get("peak_rss_mb"), entry.get("compile_s")]
                         + ([entry.get("peak_gpu_mb")] if env.get("device") == "cuda" else []))
    out += markdown_table(["Variant", f"GMAC/s b{b1}", f"Roofline b{b1}", f"GMAC/s b{big}", f"Roofline b{big}",
                           "Peak RSS (MB)", "Compile (s)"] + (["Peak GPU (MB)"] if env.get("device") == "cuda" else []),
                          roof_rows)

    # 10. plots
    out += [f"## {SECTIONS[9]}", ""]
    captions = {"pareto": "Accuracy vs batch-1 latency (Pareto front)", "accuracy": "Accuracy per variant",
                "size": "Size per variant", "latency": f"Latency at batch {b1} and {big}",
                "batch_size_analysis": "Batch-size analysis", "static_quant_analysis": "Static INT8 configs"}
    for key, caption in captions.items():
        if key in plots:
            out += [f"![{caption}]({plots[key]})", ""]

    # 11. notes
    out += [f"## {SECTIONS[10]}", ""]
    out += [f"- {n}" for n in dict.fromkeys(notes)] if notes else ["- Every method applied and every goal is met."]
    return "\n".join(out).rstrip() + "\n"


def _gmacs(value: float | None) -> str:
    return "not measured" if value is None else f"{value} GMAC/s"


def _pct_or_none(fraction: float | None) -> str | None:
    return None if fraction is None else f"{100 * fraction:.1f}%"


def _all_goals(prune: dict, quant: dict, perf: dict, with_source: bool = False) -> list:
    """Every goal: prune.json targets, quantize.json targets, then the performance goals."""
    items = [("prune.json", k, g) for k, g in (prune.get("targets") or {}).items()]
    items += [("quantize.json", k, g) for k, g in (quant.get("targets") or {}).items()]
    items += [("benchmark.json", k, g) for k, g in perf.items()]
    return items if with_source else [g for _, _, g in items]


__all__ = ["load_metrics", "speedups", "performance_goals", "plot_pareto", "plot_bars", "plot_batch_size_analysis",
           "plot_static_quant_analysis", "write_plots", "build_report", "render_report", "pareto_front"]
