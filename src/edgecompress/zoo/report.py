"""The zoo pipeline's plots and REPORT.md, computed from its metrics files only.

`zoo.json` (stage zoo_benchmark: FP32 pretrained models) and `zoo_quantize.json` (stage zoo_quantize:
dynamic and FX static INT8 of the same models). Every number in the report is read from them (and the
note on what dynamic quantization converts, `dynamic_note`), so this module needs no measuring code; a
model with random weights is marked as such in every table and plot (its accuracy is chance level by
design).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from edgecompress.bench.contention import pipeline_contention_lines
from edgecompress.goals import target
from edgecompress.io import read_json, write_text
from edgecompress.markdown import markdown_table, relative_link
from edgecompress.plots import save_figure
from edgecompress.zoo.speedups import best_fp32, candidates, int8_goals, is_int8, ms

RANDOM_TAG = " (random weights)"
PLOT_FILES = {"accuracy_vs_latency": "zoo_accuracy_vs_latency.png",
              "batch_size_analysis": "batch_size_analysis_combined.png",
              "static_quant_analysis": "static_quant_analysis.png"}


def quantize_timings(models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """zoo_quantize's timed entries by "<arch> <variant>" (variants named as in the runtimes table: `eager`,
    `dynamic`, the runtimes, `fx_<config>`): what its metrics' "contention" block and the REPORT name."""
    return {f"{arch} {name}": entry for arch, model in models.items()
            for name, entry in {"dynamic": model.get("dynamic"), **candidates(model)}.items()
            if entry and "skipped" not in entry}


def contention_report_lines(zoo: dict[str, Any], quant: dict[str, Any]) -> list[str]:
    """Which timings of both stages were taken while other processes took the CPU (`zoo.max_load`)."""
    return pipeline_contention_lines({"zoo_benchmark": (zoo.get("contention"), zoo["models"]),
                                      "zoo_quantize": (quant.get("contention"), quantize_timings(quant["models"]))},
                                     setting="zoo.max_load")


def _label(arch: str, entry: dict[str, Any]) -> str:
    return arch + (RANDOM_TAG if entry.get("random_weights") else "")


def _ms(entry: dict[str, Any], batch: int | str, key: str = "latency_ms") -> float | None:
    value = entry.get(key, {}).get(str(batch))
    return None if value is None else value["median"]


def _subtitle(zoo: dict[str, Any]) -> str:
    images = zoo["images"]
    text = f"{images['count']} images of {images['classes']} classes from {images['root']}; {zoo['threads']} threads"
    if any(e.get("random_weights") for e in zoo["models"].values()):
        text += "\nhollow markers: RANDOM weights (smoke run / no official file here) - accuracy is chance level"
    return text


def plot_accuracy_vs_latency(zoo: dict[str, Any], path: str | Path) -> None:
    """Top-1 (with its 95% interval) vs per-image latency at batch 1 and at the largest batch; marker
    area follows the parameter count."""
    batches = zoo["batch_sizes"]
    fig, axes = plt.subplots(1, 2 if len(batches) > 1 else 1, figsize=(12, 5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, batch in zip(axes[0], (batches[0], batches[-1])):
        for i, (arch, entry) in enumerate(zoo["models"].items()):
            latency = _ms(entry, batch)
            low, high = entry["top1_interval95"]
            top1 = 100 * entry["top1"]
            colour = cmap(i % 10)
            ax.errorbar(latency, top1, yerr=[[top1 - 100 * low], [100 * high - top1]], fmt="none", ecolor=colour,
                        alpha=0.6, capsize=3)
            ax.scatter(latency, top1, s=30 + entry["params"] / 2.5e5, color="none" if entry["random_weights"] else colour,
                       edgecolors=colour, linewidths=1.5, label=_label(arch, entry))
            ax.annotate(arch, (latency, top1), textcoords="offset points", xytext=(6, 4), fontsize=7)
        ax.set(xlabel=f"inference time at batch {batch} (ms/image, median)", ylabel="top-1 on the subset (%)",
               title=f"Top-1 vs latency, batch {batch}")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Pretrained ImageNet models: accuracy vs CPU latency (bars: exact 95% interval; "
                 "marker area ~ params)\n" + _subtitle(zoo), fontsize=9)
    save_figure(fig, path)


def plot_batch_size_analysis(zoo: dict[str, Any], quant: dict[str, Any], path: str | Path) -> None:
    """Per model, FP32 (solid) and dynamic INT8 (dashed): left top-1 vs per-image time through the batch
    sizes, right per-image time vs batch size. The subtitle says what dynamic mode quantizes."""
    batches = zoo["batch_sizes"]
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(13, 5.4))
    cmap = plt.get_cmap("tab10")
    for i, (arch, fp32) in enumerate(zoo["models"].items()):
        colour = cmap(i % 10)
        dynamic = quant["models"].get(arch, {}).get("dynamic")
        reference = {**fp32, **quant["models"].get(arch, {}).get("fp32", {})}  # FP32 timed in the same run
        for entry, style, kind in ((reference, "-", "FP32"), (dynamic, "--", "dynamic")):
            if not entry or "skipped" in entry:
                continue
            lat = [_ms(entry, b) for b in batches]
            ax_acc.plot(lat, [100 * entry["top1"]] * len(lat), ls=style, marker="o", ms=4, color=colour)
            ax_lat.plot(batches, lat, ls=style, marker="o", ms=4, color=colour,
                        label=f"{_label(arch, fp32)} {kind}")
    ax_acc.set(xlabel="inference time (ms/image, median)", ylabel="top-1 on the subset (%)",
               title="Top-1 vs per-image time (points: batch sizes)")
    ax_acc.set_xscale("log")
    ax_lat.set_xscale("log", base=2)
    ax_lat.set_yscale("log")
    ax_lat.set_xticks(batches, [str(b) for b in batches])
    ax_lat.set(xlabel="batch size", ylabel="ms/image (median)", title="Per-image time vs batch size")
    for ax in (ax_acc, ax_lat):
        ax.grid(alpha=0.3, which="both")
    ax_lat.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(f"Dynamic quantization over batch sizes {'/'.join(map(str, batches))}: solid FP32, dashed "
                 f"dynamic INT8\n{quant['dynamic_note']}\n{_subtitle(zoo)}", fontsize=8)
    save_figure(fig, path)


def plot_static_quant_analysis(zoo: dict[str, Any], quant: dict[str, Any], path: str | Path) -> None:
    """Grouped bars per model: top-1 and per-image latency of FP32 and each static INT8 config;
    skipped configs are marked with their reason."""
    configs = quant["static_configs"]
    batch = quant["static_batch_size"]
    archs = list(zoo["models"])
    series = ["fp32", *configs]
    width = 0.8 / len(series)
    fig, (ax_acc, ax_lat) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(archs) + 4), 8.5), sharex=True)
    cmap = plt.get_cmap("Set2")
    for j, name in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(archs))]
        entries = [{**zoo["models"][a], **quant["models"].get(a, {}).get("fp32", {})} if name == "fp32"
                   else quant["models"].get(a, {}).get("static", {}).get(name, {}) for a in archs]
        measured = [e if e and "skipped" not in e else None for e in entries]
        ax_acc.bar(xs, [100 * e["top1"] if e else 0 for e in measured], width, color=cmap(j), label=name,
                   edgecolor="black", linewidth=0.4)
        ax_lat.bar(xs, [(_ms(e, batch) or 0) if e else 0 for e in measured], width, color=cmap(j), label=name,
                   edgecolor="black", linewidth=0.4)
        for x, e in zip(xs, entries):
            if e and "skipped" in e:
                for ax in (ax_acc, ax_lat):
                    ax.text(x, 0.02, "skipped", rotation=90, ha="center", va="bottom", fontsize=6,
                            color="dimgray", transform=ax.get_xaxis_transform())
    ax_acc.set(ylabel="top-1 on the subset (%)", title="Accuracy per static INT8 config (FX graph mode)")
    ax_lat.set(ylabel=f"ms/image at batch {batch} (median)", title="Inference time per config")
    ax_lat.set_xticks(range(len(archs)), [_label(a, zoo["models"][a]) for a in archs], rotation=15, ha="right")
    for ax in (ax_acc, ax_lat):
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(series))
    fig.suptitle(f"Static INT8: engines' default QConfig mappings and a custom QConfig, calibrated on "
                 f"{quant['calibration']['images']} images not used for evaluation\n{_subtitle(zoo)}", fontsize=8)
    save_figure(fig, path)


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}"


def _interval(entry: dict[str, Any]) -> str:
    low, high = entry["top1_interval95"]
    return f"{100 * low:.1f}–{100 * high:.1f}"


PUBLISHED_BAND_POINTS = 3.0  # goal: subset top-1 of real weights within this of the published top-1
INT8_DROP_POINTS = 2.0  # goal: the best static INT8 config within this of FP32 top-1


def zoo_goals(zoo: dict[str, Any], quant: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The zoo's quality goals, per model with real weights (random weights have no goal): subset top-1
    within 3 points of the published figure, and the best static INT8 config within 2 points of FP32."""
    goals: dict[str, dict[str, Any]] = {}
    for arch, entry in zoo["models"].items():
        if entry.get("random_weights"):
            continue
        model = quant["models"].get(arch, {})
        delta = entry.get("top1_minus_published_points")
        if delta is not None:
            goals[f"{arch}: top-1 vs published"] = target(
                abs(delta), at_most=PUBLISHED_BAND_POINTS,
                goal=f"|subset top-1 - published| <= {PUBLISHED_BAND_POINTS:g} points")
        static = {name: s for name, s in quant["models"].get(arch, {}).get("static", {}).items() if "skipped" not in s}
        if static:
            best = max(static, key=lambda name: static[name]["top1"])
            goals[f"{arch}: best static INT8 ({best}) vs FP32"] = target(
                100 * (entry["top1"] - static[best]["top1"]), at_most=INT8_DROP_POINTS,
                goal=f"top-1 drop <= {INT8_DROP_POINTS:g} points")
        if model.get("runtimes"):
            goals.update(int8_goals(arch, entry["top1"], model, quant.get("runtime_batch_sizes") or [8]))
    return goals


def render_report(zoo: dict[str, Any], quant: dict[str, Any], plots: dict[str, str]) -> str:
    """REPORT.md of the zoo pipeline (markdown)."""
    batches = zoo["batch_sizes"]
    images = zoo["images"]
    lines = ["# Model zoo report", "",
             f"Generated by the `zoo_report` stage from `metrics/zoo.json` and `metrics/zoo_quantize.json`. "
             f"{images['count']} images ({images['classes']} classes, one per class first) from "
             f"`{images['root']}`; class list: {images['class_list']}. CPU: {zoo['environment'].get('cpu')}, "
             f"{zoo['threads']} threads, torch {zoo['environment'].get('torch')}. Latency: median over "
             f"{zoo['timing']['repeats']}+ timed calls after {zoo['timing']['warmup']} warm-up per batch size.", ""]
    lines += contention_report_lines(zoo, quant)
    random = [a for a, e in zoo["models"].items() if e.get("random_weights")]
    if random:
        lines += [f"**Random weights (untrained): {', '.join(random)}.** No official weights file for them was "
                  f"found here (never downloaded); their accuracy is chance level and says nothing about the "
                  f"architecture — only their size and latency are meaningful. Put the official files in the "
                  f"weights directory and set them to `pretrained` in params.yaml.", ""]
    lines += ["## FP32 models (stage zoo_benchmark)", ""]
    rows = []
    for arch, e in zoo["models"].items():
        published = (e.get("published") or {}).get("top1")
        rows.append([_label(arch, e), _pct(e["top1"]), _interval(e), _pct(e["top5"]),
                     None if published is None else f"{published:.1f}",
                     e.get("top1_minus_published_points"), e.get("published_in_interval"),
                     f"{e['params'] / 1e6:.2f}", f"{e['macs'] / 1e9:.2f}", f"{e['size_mb']:.1f}",
                     *[f"{_ms(e, b):.2f}" for b in batches]])
    lines += markdown_table(["model", "top-1 %", "top-1 95% interval", "top-5 %", "published top-1 %",
                             "Δ points", "published inside interval", "params (M)", "GMACs", "size (MB)",
                             *[f"ms/image b{b}" for b in batches]], rows)
    lines += ["Published: ImageNet-1k validation (50,000 images) top-1 from the weights' metadata (torchvision), or "
              "the TF EfficientNet-Lite README for efficientnet_lite* (no top-5 published). The interval is "
              "the exact (Clopper–Pearson) 95% binomial interval of the subset's top-1: with one image per class "
              "a few points either way are noise.", ""]
    lines += ["## Dynamic quantization (stage zoo_quantize)", "", f"> {quant['dynamic_note']}.", "",
              "FP32 latencies in this and the next table were timed by zoo_quantize right before the quantized "
              "models (same process, same images), not taken from zoo_benchmark's run minutes earlier.", ""]
    rows = []
    for arch, e in zoo["models"].items():
        d = quant["models"].get(arch, {}).get("dynamic")
        if not d:
            continue
        if "skipped" in d:
            rows.append([_label(arch, e), "skipped: " + d["skipped"]] + [None] * (3 + len(batches)))
            continue
        layers, reference = d["layers"], quant["models"][arch].get("fp32", e)
        rows.append([_label(arch, e), f"{layers['quantized']} INT8 / {layers['float']} float",
                     _pct(e["top1"]), _pct(d["top1"]), f"{e['size_mb']:.1f} → {d['size_mb']:.1f}",
                     *[f"{_ms(reference, b):.2f} → {_ms(d, b):.2f}" for b in batches]])
    lines += markdown_table(["model", "compute layers", "FP32 top-1 %", "dynamic top-1 %", "size MB",
                             *[f"ms/image b{b} FP32 → dynamic" for b in batches]], rows) if rows else \
        ["Not run (`zoo.dynamic: false`): for CNNs it would quantize the classifier alone.", ""]
    batch = quant["static_batch_size"]
    lines += ["## Static INT8, FX graph mode (stage zoo_quantize)", "",
              f"Calibrated on {quant['calibration']['images']} images ({quant['calibration']['batches']} batch(es) of "
              f"{quant['calibration']['batch_size']}) that are not among the evaluated ones; latency at batch {batch}. "
              f"`custom`: HistogramObserver activations (full 8-bit range) + 7-bit per-channel symmetric MinMax weights (`quantize.fx.custom_qconfig`); `vnni`: the same activations, 8-bit weights, 7-bit only on depthwise convolutions (`quantize.fx.vnni_qconfig_mapping`). Every config quantizes the model with ReLU6 split into ReLU + clamp (same function; the convolution's output range then excludes the negative pre-activations)"
              + ("; each convolution's bias is then corrected for its mean INT8 output error on the calibration images "
                 "(`zoo.static_bias_correction`)" if quant.get("static_bias_correction") else "")
              + ". Agreement: share of images whose top-1 class equals FP32's; SQNR: of the logits vs FP32.", ""]
    rows = []
    for arch, e in zoo["models"].items():
        for name, s in quant["models"].get(arch, {}).get("static", {}).items():
            if "skipped" in s:
                rows.append([_label(arch, e), name, "skipped: " + s["skipped"], None, None, None, None, None, None])
                continue
            fp32_ms, int8_ms = _ms(quant["models"][arch].get("fp32", e), batch), _ms(s, batch)
            rows.append([_label(arch, e), name, f"{_pct(e['top1'])} → {_pct(s['top1'])}",
                         _pct(s["top1_agreement"]), s["sqnr_db"], f"{s['layers']['quantized']} INT8 / {s['layers']['float']} float",
                         f"{e['size_mb']:.1f} → {s['size_mb']:.1f}", f"{fp32_ms:.2f} → {int8_ms:.2f}",
                         f"{fp32_ms / int8_ms:.2f}×" if fp32_ms and int8_ms else None])
    lines += markdown_table(["model", "config", "top-1 % FP32 → INT8", "agreement %", "SQNR dB", "compute layers", "size MB",
                             f"ms/image b{batch}", "speed-up"], rows)
    lines += _runtimes_section(zoo, quant) + _goals_section(zoo, quant)
    lines += ["## Plots", ""] + [f"![{key}]({path})" for key, path in plots.items()] + [""]
    return "\n".join(lines)


def _runtimes_section(zoo: dict[str, Any], quant: dict[str, Any]) -> list[str]:
    """Every variant of every model beside the fastest FP32 runtime at each runtime batch size."""
    batches = quant.get("runtime_batch_sizes")
    if not batches:
        return []
    lines = ["## Runtimes: INT8 against the fastest FP32 runtime (stage zoo_quantize)", "",
             "Every model also runs under `torch.compile`, ONNX Runtime (FP32 export, static QDQ INT8) and OpenVINO "
             "(FP32 IR, NNCF INT8), each reloaded from its file and timed with the same timer on the same images "
             f"as eager PyTorch. A speed-up is the fastest FP32 runtime's latency (eager, compiled, ONNX Runtime or "
             f"OpenVINO, at that batch size) over the variant's. FX static INT8 is timed at batch "
             f"{quant['static_batch_size']} only.", ""]
    rows = []
    for arch, e in zoo["models"].items():
        model = quant["models"].get(arch, {})
        if not model.get("runtimes"):  # zoo.runtimes_on: pretrained leaves random-weight models out
            continue
        for name, entry in model.get("runtimes", {}).items():
            if "skipped" in entry:
                rows.append([_label(arch, e), name, "skipped: " + entry["skipped"]] + [None] * (4 + 2 * len(batches)))
        fastest = {b: best_fp32(model, b) for b in batches}
        for name, entry in candidates(model).items():
            eager = name == "eager"  # its accuracy and size are zoo_benchmark's; its latency re-timed here
            rows.append([_label(arch, e), name, "INT8" if is_int8(name) else "FP32",
                         _pct(e["top1"] if eager else entry.get("top1")),
                         None if eager else _pct(entry.get("top1_agreement")), e["size_mb"] if eager else entry.get("size_mb"),
                         entry.get("compile_s"),
                         *[None if ms(entry, b) is None else f"{ms(entry, b):.2f}" for b in batches],
                         *[None if ms(entry, b) is None or fastest[b][1] is None
                           else f"{fastest[b][1] / ms(entry, b):.2f}× ({fastest[b][0]})" for b in batches]])
    return lines + markdown_table(["model", "variant", "precision", "top-1 %", "agreement %", "size MB", "compile s",
                                   *[f"ms/image b{b}" for b in batches],
                                   *[f"vs fastest FP32 b{b}" for b in batches]], rows) + _gate_lines(quant)


def _gate_lines(quant: dict[str, Any]) -> list[str]:
    """The quality gate (`zoo.max_accuracy_drop`) of each INT8 runtime: its drop on the images it judges on,
    the nodes the fallback kept float and the all-INT8 figures they replaced."""
    lines = []
    for arch, model in quant["models"].items():
        for name, entry in model.get("runtimes", {}).items():
            gate = entry.get("gate")
            if not gate:
                continue
            text = (f"- {arch} `{name}`: drop {gate['drop_points']:.2f} top-1 points on the {gate['judged_on']} "
                    f"(budget {gate['budget_points']}, {'met' if gate['met'] else 'missed'})")
            if gate["float_layers"]:
                before = gate["all_int8"]
                text += (f" with {len(gate['float_layers'])} of {gate['candidates']} nodes float "
                         f"({', '.join(gate['float_layers'])}); all-INT8: drop {before['drop_points']:.2f} points, "
                         f"{before['latency_ms']:.2f} ms/image at batch 8 (now {gate['latency_ms']:.2f})")
            lines.append(text + ".")
    return (["", "Quality gate (drop vs FP32 on never-evaluated images, named per line):", ""] + lines
            if lines else [])


def _goals_section(zoo: dict[str, Any], quant: dict[str, Any]) -> list[str]:
    goals = zoo_goals(zoo, quant)
    if not goals:
        return []
    return ["## Goals", ""] + markdown_table(
        ["goal", "measured", "target", "met"],
        [[name, f"{g['value']:.2f} {g.get('unit', 'points')}", g["goal"], g["met"]] for name, g in goals.items()]
    ) + ["A missed goal is reported with its number, never adjusted. On this ImageNet sample (images of unstated "
         "split, not the 50,000 validation images) real weights score above their published figure; see the "
         "interval column.", ""]


def write_plots(zoo: dict[str, Any], quant: dict[str, Any], plots_dir: str | Path) -> dict[str, Path]:
    """The quantization plots (the accuracy-vs-latency plot belongs to zoo_benchmark)."""
    plots_dir = Path(plots_dir)
    paths = {key: plots_dir / PLOT_FILES[key] for key in ("batch_size_analysis", "static_quant_analysis")}
    plot_batch_size_analysis(zoo, quant, paths["batch_size_analysis"])
    plot_static_quant_analysis(zoo, quant, paths["static_quant_analysis"])
    return paths


def build_report(zoo_path: str | Path, quant_path: str | Path, plots_dir: str | Path, out_path: str | Path) -> str:
    """Read the metrics files and write REPORT.md (atomically); plot links relative to the report."""
    out_path = Path(out_path)
    plots = {key: Path(plots_dir, name) for key, name in PLOT_FILES.items()}
    rel = {key: relative_link(path, out_path.parent) for key, path in plots.items()}
    text = render_report(read_json(zoo_path), read_json(quant_path), rel)
    write_text(out_path, text)
    return text
