"""Charts of the detection pipeline's results: mAP against inference time per model and batch size
(detect_eval) and the compressed variants' Pareto plot (detect_compress).

Kept apart from the report's text (`detection.report`), so a wording change of REPORT.md does not
re-run the stages that draw these, and from the box drawings (`detection.visualize`)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers/CI
import matplotlib.pyplot as plt  # noqa: E402

from edgecompress.plots import pareto_front, save_figure  # noqa: E402

PLOT_FILES = {"map50": "map50_vs_inference_time.png", "map": "map_vs_total_inference_time.png"}
PARETO_FILE = "compress_pareto.png"
MARKERS = ("o", "s", "^", "D", "v", "P")


# ----------------------------------------------------------------------------------------------
# mAP against time
def model_label(name: str, entry: dict[str, Any]) -> str:
    """A model's name as figures and the report show it (random weights flagged)."""
    return f"{name} (random weights)" if entry.get("random_weights") else name


def timed_rows(models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """detect_eval's timed passes by "<model> b<batch>": what its metrics' "contention" block and the REPORT name."""
    return {f"{name} b{batch}": row for name, entry in models.items() for batch, row in entry["batch_sizes"].items()}


def _points(metrics: dict[str, Any], time_key: str, map_key: str) -> dict[str, list[tuple[int, float, float]]]:
    out: dict[str, list[tuple[int, float, float]]] = {}
    for name, entry in metrics["models"].items():
        for batch, row in entry["batch_sizes"].items():
            out.setdefault(name, []).append((int(batch), float(row["timing"][time_key]), float(row[map_key])))
    return out


def plot_map_vs_time(metrics: dict[str, Any], path: str | Path, *, time_key: str, map_key: str, xlabel: str,
                     ylabel: str, title: str) -> None:
    """One line per model through its batch sizes (marker per batch size, labelled b<N>)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (name, points), colour in zip(_points(metrics, time_key, map_key).items(), plt.cm.tab10.colors):
        points.sort()
        ax.plot([p[1] for p in points], [p[2] for p in points], "-", color=colour, alpha=0.5,
                label=model_label(name, metrics["models"][name]))
        for i, (batch, x, y) in enumerate(points):
            ax.plot(x, y, MARKERS[i % len(MARKERS)], color=colour)
            ax.annotate(f"b{batch}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_plots(metrics: dict[str, Any], plots_dir: str | Path) -> dict[str, str]:
    """The two mAP-vs-time plots of issue #7 under `plots_dir`; returns {key: path}."""
    plots_dir = Path(plots_dir)
    images = metrics["data"]["images"]
    plot_map_vs_time(metrics, plots_dir / PLOT_FILES["map50"], time_key="inference_ms_per_image", map_key="map_50",
                     xlabel="inference time per image (ms: pre-process + model + NMS + post-process)",
                     ylabel="mAP@.5", title=f"mAP@.5 vs inference time ({images} images)")
    plot_map_vs_time(metrics, plots_dir / PLOT_FILES["map"], time_key="total_s", map_key="map",
                     xlabel=f"total time for {images} images (s, decoding included)", ylabel="mAP@[.5:.95]",
                     title=f"mAP@[.5:.95] vs total inference time ({images} images)")
    return {key: str(plots_dir / name) for key, name in PLOT_FILES.items()}


# ----------------------------------------------------------------------------------------------
# Compressed variants
def variant_points(compress: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(inference ms per image, mAP@.5) of every measured variant."""
    return {name: (v["timing"]["inference_ms_per_image"], v["map_50"])
            for name, v in compress["variants"].items() if "skipped" not in v}


def plot_pareto(compress: dict[str, Any], path: str | Path) -> None:
    """mAP@.5 against inference time per image for every measured variant, the Pareto front joined
    (variants with equal time and mAP are all on it: `plots.pareto_front(keep_ties=True)`)."""
    points = variant_points(compress)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (name, (t, m)), colour in zip(points.items(), itertools.cycle(plt.cm.tab10.colors)):  # names tell repeats apart
        ax.plot(t, m, "o", color=colour, markersize=8)
        ax.annotate(name, (t, m), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(points, keep_ties=True)
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="grey", alpha=0.6,
            label="Pareto front")
    suffix = " (random weights)" if compress.get("random_weights") else ""
    ax.set_xlabel(f"inference time per image (ms, batch {compress['batch_size']}, {compress['device']})")
    ax.set_ylabel("mAP@.5")
    ax.set_title(f"{compress['model']}{suffix}: variants on {compress['images']} images", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
