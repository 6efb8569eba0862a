"""REPORT.md of the detection pipeline, built from its metrics files only (the figures it links are
drawn by the stages, `detection.charts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.bench.contention import pipeline_contention_lines
from edgecompress.detection.charts import PARETO_FILE, PLOT_FILES, model_label, timed_rows, variant_points
from edgecompress.io import read_json, write_text
from edgecompress.markdown import markdown_table, percent, times
from edgecompress.plots import pareto_front

# Published COCO val2017 figures at 640 px (ultralytics/yolov5 v6.1+ README): (mAP@.5:.95, mAP@.5)
PUBLISHED = {"yolov5n": (28.0, 45.7), "yolov5s": (37.4, 56.8), "yolov5m": (45.4, 64.1), "yolov5l": (49.0, 67.3),
             "yolov5x": (50.7, 68.9)}
MAP50_BAND = 0.35  # a real yolov5n scores at least this on COCO images (issue #7's plausibility band)
PRUNED_FP32_SPEEDUP = 1.2  # issue #17: pruned network's fastest FP32 runtime vs the original's, at the default ratio


def _compress_section(compress: dict[str, Any], plots_dir: Path, report_dir: Path) -> list[str]:
    out = ["## Compressed variants", "",
           f"`detect_compress`: {compress['model']}" + (" (random weights)" if compress.get("random_weights") else "")
           + f" at batch {compress['batch_size']} on {compress['device']}; INT8 calibrated on "
           f"{compress['calibration']['images']} images "
           + ("outside the evaluation subset" if compress["calibration"]["disjoint_from_evaluation"]
              else "**of the evaluation subset** (the source has no other images)")
           + ". Each variant runs the same "
           "pre-processing, NMS and post-processing; only the model block differs.", ""]
    rows = []
    front = set(pareto_front(variant_points(compress), keep_ties=True))
    for name, v in compress["variants"].items():
        if "skipped" in v:
            rows.append([f"`{name}`", "skipped: " + v["skipped"], *[None] * 8])
            continue
        model_ms = v["timing"]["blocks"]["model"]["per_image_ms"]
        rows.append([f"`{name}`", v["method"], _fmt(v["map"]), _fmt(v["map_50"]), _fmt(v["pycocotools"]["map_50"]),
                     f"{model_ms:.1f}", f"{v['timing']['inference_ms_per_image']:.1f}",
                     f"{v['params'] / 1e6:.2f}" if v.get("params") else None, v.get("size_mb"),
                     "yes" if name in front else ""])
    out += markdown_table(["Variant", "Method", "mAP", "mAP@.5", "COCOeval mAP@.5", "Model ms", "Inference ms",
                           "Params (M)", "File MB", "Pareto"], rows)
    out.append(f"![Pareto: mAP@.5 vs inference time]({_link(plots_dir / PARETO_FILE, report_dir)})")
    tuned = (compress["variants"].get("pruned") or {}).get("finetune")
    if tuned:
        curve = ", ".join(f"{_fmt(row.get('val/map_50'))}" for row in tuned["history"])
        before = tuned.get("before", {}).get("map_50")
        out += ["", f"The pruned network was fine-tuned {tuned['epochs']} epochs on {tuned['images']} training images "
                + (f"at lr {tuned['lr']:g} " if tuned.get("lr") else "")
                + f"({tuned['seconds']:.0f} s); evaluation-subset mAP@.5 "
                + (f"{_fmt(before)} before fine-tuning, " if before is not None else "")
                + f"after each epoch: {curve}."]
    out += int8_lines(compress.get("int8"))
    out += pruning_lines(compress.get("pruning"))
    gates = {n: v["gate"] for n, v in compress["variants"].items() if v.get("gate")}
    out += [""] + [f"Quality gate of `{n}` ({g['judged_on']}, budget {g['budget_points']} points): drop "
                   f"{g['drop_points']:.1f}, {'met' if g['met'] else 'missed'}"
                   + (f", {len(g['float_layers'])} convolution(s) kept float ({', '.join(g['float_layers'])}; "
                      f"all-INT8 drop {g['all_int8']['drop_points']:.1f})" if g["float_layers"] else "") + "."
                   for n, g in gates.items()] if gates else []
    return out + [""]


def int8_lines(summary: dict[str, Any] | None) -> list[str]:
    """detect_compress's "int8" block (`int8_targets.int8_summary`): issue #15's two targets on the best INT8
    variant, met or not, with their numbers."""
    if not summary:
        return []
    best, reference, whole = summary["best"], summary["best_fp32"], summary["best_fp32_inference"]
    row = summary["variants"][best]
    others = ", ".join(f"`{name}` {-r['map_50_drop_points']:+.1f} points / {times(r['speedup'])}"
                       for name, r in summary["variants"].items() if name != best)
    out = ["", f"INT8 against FP32: the best INT8 variant is the fastest within the mAP@.5 budget, else the most "
           f"accurate one: `{best}`" + (f" (the other: {others})" if others else "") + ".", ""]
    return out + markdown_table(["Target", "Status"], [
        [f"Best INT8 mAP@.5 within {summary['map_50_drop_budget']:g} point of FP32",
         f"{'met' if summary['map_50_met'] else 'NOT met'} (`{best}` {-row['map_50_drop_points']:+.1f} points)"],
        [f"Best INT8 ≥ {times(summary['speedup_goal'], 1)} the fastest FP32 runtime (model block)",
         f"{'met' if summary['speedup_met'] else 'NOT met'} (`{reference['variant']}` {reference['model_ms']:.1f} ms "
         f"-> `{best}` {row['model_ms']:.1f} ms, {times(row['speedup'])}; whole inference: `{whole['variant']}` "
         f"{whole['inference_ms']:.1f} -> {row['inference_ms']:.1f} ms, {times(row['inference_speedup'])})"]])


def pruning_lines(summary: dict[str, Any] | None) -> list[str]:
    """detect_compress's "pruning" block (`pruning.pruning_summary`): MACs removed against the milliseconds
    each runtime saved, and issue #17's targets, met or not, with their numbers."""
    if not summary:
        return []
    rounding = f", round_to {summary['round_to']}" if summary.get("round_to") else ""
    out = ["", f"Pruning (ratio {summary['ratio']} per layer{rounding}): {percent(summary['mac_reduction'], 1, '%')} "
           f"of the MACs removed ({summary['macs_before'] / 1e9:.2f} -> {summary['macs_after'] / 1e9:.2f} GMACs). "
           "Model-block ms/image of each runtime without and with pruning; the realised fraction is the latency "
           "reduction over the MAC reduction (1: every removed MAC became time).", ""]
    runtimes = summary["runtimes"]
    out += markdown_table(["Runtime", "Original ms", "Pruned ms", "Speedup", "Realised fraction"], [
        [f"`{name}` / `{r['pruned_variant']}`", f"{r['original_ms']:.1f}", f"{r['pruned_ms']:.1f}", times(r["speedup"]),
         None if r["realised_fraction"] is None else f"{r['realised_fraction']:.2f}"] for name, r in runtimes.items()])
    targets = []
    if runtimes:
        slowest, row = min(runtimes.items(), key=lambda item: item[1]["speedup"])
        targets.append(["Pruned never slower than the original on any runtime",
                        f"{'met' if summary['never_slower'] else 'NOT met'} (lowest speedup: `{slowest}` "
                        f"{times(row['speedup'])})"])
    best = summary.get("best_fp32")
    if best:
        targets.append([f"Pruned ≥ {times(PRUNED_FP32_SPEEDUP, 1)} faster than the original's best FP32 runtime "
                        f"at the default ratio (here {summary['ratio']})",
                        f"{'met' if best['speedup'] >= PRUNED_FP32_SPEEDUP else 'NOT met'} (`{best['original']}` "
                        f"{best['original_ms']:.1f} ms -> `{best['pruned']}` {best['pruned_ms']:.1f} ms, "
                        f"{times(best['speedup'])})"])
    out += markdown_table(["Target", "Status"], targets) if targets else []
    return out + ["mAP@.5 after pruning has no target: recovering it needs more training than this CPU allows."]


def _train_section(train: dict[str, Any]) -> list[str]:
    if "skipped" in train:
        return ["## Fine-tuning", "", f"`detect_train` ({train['model']}) skipped: {train['skipped']}.", ""]
    s = train["settings"]
    out = ["## Fine-tuning", "",
           f"`detect_train`: {train['model']} ({train['family']}, {train['trainer']}) from "
           + ("random weights" if train["random_start"] else f"`{train['start']}`")
           + f", {train['epochs']} epochs on {train['train_images']} training images (none of them evaluated) "
           f"at {train['imgsz']} px, batch {s['batch_size']}, {s['optimizer']} lr {s['lr']} (cosine)"
           + (", BatchNorm statistics frozen" if s.get("freeze_batchnorm") else "") + ", "
           f"on {train['device']}, {train['seconds']:.0f} s -> `{train['out']}`. The last epoch is kept; the "
           "per-epoch subset mAP is monitoring, not model selection.", ""]
    rows = [[row["epoch"], f"{row['lr']:.2g}", *(f"{row[k]:.4f}" if row.get(k) is not None else None
                                                for k in ("train/loss",)),
             _fmt(row.get("val/map")), _fmt(row.get("val/map_50"))] for row in train["history"]]
    out += markdown_table(["Epoch", "LR", "Train loss", "Subset mAP", "Subset mAP@.5"], rows)
    before, after = train["before"], train["after"]
    out += [f"Evaluation subset before -> after: mAP {_fmt(before['map'])} -> {_fmt(after['map'])}, mAP@.5 "
            f"{_fmt(before['map_50'])} -> {_fmt(after['map_50'])}.", ""]
    return out


def _link(path: str | Path, report_dir: Path) -> Path:
    """`path` as REPORT.md links it: relative to the report's folder when it lies inside it."""
    path = Path(path)
    return path.relative_to(report_dir) if path.is_relative_to(report_dir) else path


def _fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def published_for(entry: dict[str, Any]) -> tuple[float, float] | None:
    """Published COCO val2017 (mAP, mAP@.5) of a model's architecture, when it is a known YOLOv5."""
    if entry.get("random_weights"):
        return None
    for key in (str(entry.get("arch", "")), Path(str(entry.get("weights", ""))).name.split(".")[0]):
        if key in PUBLISHED:
            return PUBLISHED[key]
    return None


def render_report(metrics: dict[str, Any], data: dict[str, Any], imported: dict[str, Any] | None,
                  plots: dict[str, str], report_dir: str | Path, profile: dict[str, Any] | None = None,
                  compress: dict[str, Any] | None = None, plots_dir: str | Path = "plots",
                  train: dict[str, Any] | None = None) -> str:
    """REPORT.md text: data, per model × batch size accuracy and time, agreement, goals, plots."""
    report_dir = Path(report_dir)
    out = ["# edgecompress detection report", "",
           "Generated from `metrics/detection.json` (no number typed by hand).", "", "## Data", ""]
    source = data.get("source", {})
    out += [f"{data.get('images')} images drawn with seed {data.get('seed')} from {source.get('images')} "
            f"({source.get('format')} at `{source.get('root')}`): {data.get('boxes')} boxes "
            f"({data.get('crowd_boxes', 0)} crowd), {data.get('classes_present')} classes present.", ""]
    if "train" in f"{source.get('annotations') or ''}{source.get('labels') or ''}":
        out += ["These images come from a training split (e.g. COCO train2017), which COCO-trained detectors "
                "were fitted on: scores above the published val2017 figures are expected and are not a "
                "validation result.", ""]
    if imported:
        out += [f"Imported checkpoint: `{imported['source']}` (sha256 `{imported['sha256'][:16]}…`), "
                f"{imported['params']:,} parameters, {imported['classes']} classes.", ""]
    settings = metrics["settings"]
    out += ["## Accuracy and time", "",
            f"mAP over all images with boxes kept at score ≥ {settings['map_conf_threshold']} (NMS IoU "
            f"{settings['iou_threshold']}, at most {settings['max_det']} per image); precision / recall / F1 at "
            f"score ≥ {settings['conf_threshold']} and IoU 0.5. Times are per image, measured over the whole "
            f"subset after {settings['warmup_batches']} warm-up batch(es), {settings['threads']} thread(s).", ""]
    rows, goals = [], []
    for name, entry in metrics["models"].items():
        label = model_label(name, entry)
        for batch, row in entry["batch_sizes"].items():
            t, b = row["timing"], row["timing"]["blocks"]
            op = row["operating_point"]
            rows.append([label, batch, _fmt(row["map"]), _fmt(row["map_50"]), _fmt(row["pycocotools"]["map"]),
                         _fmt(row["pycocotools"]["map_50"]), _fmt(op["precision"]), _fmt(op["recall"]),
                         _fmt(op["f1"]), *(f"{b[k]['per_image_ms']:.1f}" if k in b else "in model"
                                           for k in ("preprocess", "model", "nms", "postprocess")),
                         f"{t['inference_ms_per_image']:.1f}", f"{t['total_s']:.2f}"])
        first = next(iter(entry["batch_sizes"].values()))
        agree = all(r["agreement"]["agree"] for r in entry["batch_sizes"].values())
        goals.append([f"{label}: torchmetrics vs pycocotools within {settings.get('agreement_points', 0.5)} pt",
                      "met" if agree else "NOT met"])
        published = published_for(entry)
        if published:
            goals.append([f"{label}: mAP@.5 ≥ {MAP50_BAND:.2f} (plausible for this model; published COCO val2017 "
                          f"mAP@.5 {published[1]}, mAP@.5:.95 {published[0]})",
                          f"{'met' if first['map_50'] >= MAP50_BAND else 'NOT met'} ({_fmt(first['map_50'])} / "
                          f"{_fmt(first['map'])} here)"])
        elif entry.get("random_weights"):
            goals.append([f"{label}: accuracy goals", "not judged: random weights (a smoke run of the pipeline)"])
    out += markdown_table(["Model", "Batch", "mAP", "mAP@.5", "COCOeval mAP", "COCOeval mAP@.5", "P", "R", "F1",
                           "Pre ms", "Model ms", "NMS ms", "Post ms", "Inference ms", "Total s"], rows)
    out += ["## Goals", ""] + markdown_table(["Goal", "Status"], goals)
    out += ["## Plots", ""]
    for key, caption in (("map50", "mAP@.5 vs inference time"), ("map", "mAP vs total time")):
        if key in plots:
            out += [f"![{caption}]({_link(plots[key], report_dir)})", ""]
    if train:
        out += _train_section(train)
    if compress:
        out += _compress_section(compress, Path(plots_dir), report_dir)
    if profile:
        out += _profile_section(profile)
    env = metrics.get("environment", {})
    out += ["## Environment", "", f"{env.get('cpu')} ({env.get('logical_cores')} logical cores), device "
            f"{env.get('device')}, torch {env.get('torch')}, Python {env.get('python')}.", ""]
    out += contention_report_lines(metrics, compress, profile)
    return "\n".join(out).rstrip() + "\n"


def contention_report_lines(metrics: dict[str, Any], compress: dict[str, Any] | None,
                            profile: dict[str, Any] | None) -> list[str]:
    """Which timed passes of detect_eval, detect_compress and detect_profile ran while other processes took
    the CPU (`detection.max_load`)."""
    stages = {"detect_eval": (metrics.get("contention"), timed_rows(metrics["models"])),
              "detect_compress": ((compress or {}).get("contention"), (compress or {}).get("variants", {})),
              "detect_profile": ((profile or {}).get("contention"), (profile or {}).get("models", {}))}
    return pipeline_contention_lines(stages, setting="detection.max_load")


def _profile_section(profile: dict[str, Any]) -> list[str]:
    out = ["## Profile", "", f"`detect_profile` on {profile.get('device')}: operator tables and Chrome traces "
           "(open in ui.perfetto.dev) under `metrics/profile/`.", ""]
    rows = []
    for name, entry in profile["models"].items():
        ops = ", ".join(f"{op['name']} {op.get('self_cpu_ms', op.get('self_cuda_ms'))} ms"
                        for op in entry["profile"]["top_ops"][:3])
        rows.append([name, entry["batch_size"], f"{entry['inference_ms_per_image']:.1f}",
                     f"{entry['peak_memory_mb']:.0f} ({entry['peak_memory_kind']})", ops,
                     f"`{Path(entry['profile']['table']).name}`"])
    return out + markdown_table(["Model", "Batch", "Inference ms/image", "Peak memory MB",
                                 "Top operators (self time per batch)", "Table"], rows)


def build_report(metrics_path: str | Path, data_path: str | Path, import_path: str | Path | None,
                 plots_dir: str | Path, out: str | Path, profile_path: str | Path | None = None,
                 compress_path: str | Path | None = None, train_path: str | Path | None = None) -> None:
    """Read the metrics files (the optional ones may be absent) and write REPORT.md atomically."""
    def optional(path: str | Path | None) -> dict[str, Any] | None:
        return read_json(path) if path and Path(path).is_file() else None

    metrics, data = read_json(metrics_path), read_json(data_path)
    plots = {key: str(Path(plots_dir) / name) for key, name in PLOT_FILES.items()}
    write_text(out, render_report(metrics, data, optional(import_path), plots, Path(out).parent,
                                  optional(profile_path), optional(compress_path), plots_dir, optional(train_path)))
