"""The chain's REPORT.md, computed from the metrics files only (`chain_metrics.load_metrics`): every
number is read from `metrics/{teacher,student_baseline,distill,prune,quantize,benchmark}.json` or
derived from them (ratios, differences); nothing is typed by hand. One function per section, each
returning its lines and adding what deserves a note to the shared list of notes. (About 400 lines:
the eleven sections of one document, kept together so the report reads top to bottom.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgecompress import EdgecompressError
from edgecompress.io import write_text
from edgecompress.markdown import cell, markdown_table, percent, relative_link, signed_points, thousands, times
from edgecompress.report.chain_metrics import (batch_keys, contention_lines, latency, load_metrics, measured_entry, ordered_variants,
                                               gate_note, performance_goals, ratio, same_runtime_speedups,
                                               speedups)
from edgecompress.report.chain_plots import PLOT_FILES
from edgecompress.report.chain_pruning import pruning_lines

SECTIONS = ("Summary", "Results", "Knowledge distillation", "Pruning", "Quantization", "Speedups", "Goals",
            "Parameters used", "Environment and roofline", "Plots", "Notes")


@dataclass
class _Report:
    """What every section reads: the metrics, params.yaml, the plot links, and the notes gathered so far."""

    metrics: dict[str, dict]
    params: Mapping[str, Any]
    plots: Mapping[str, str]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bench = self.metrics["benchmark"]
        self.b1, self.big = batch_keys(self.bench)
        self.goals = performance_goals(self.bench)


def _ms(bench: dict, name: str, batch: str) -> str | None:
    med, iqr = latency(bench, name, batch), latency(bench, name, batch, "iqr")
    if med is None:
        return None
    return f"{med:.3f} ± {iqr:.3f}" if iqr is not None else f"{med:.3f}"


def _ms_value(bench: dict, name: str | None, batch: str) -> str:
    value = latency(bench, name, batch) if name else None
    return "not measured" if value is None else f"{value:.3f}"


def _num(value: float | None) -> str:
    return "not measured" if value is None else f"{value + 0.0:.4g}"  # + 0.0: prints -0.0 as 0


def _arch(metrics: dict) -> str:
    return f"{metrics.get('arch', '?')} w{metrics.get('width', '?')}"


def _layer_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _settings(settings: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {cell(v)}" for k, v in settings.items() if k != "note") or "—"


def _pruned_channels(prune: dict) -> str:
    """'0.2 of the channels per group', with the per-layer overrides when there are any."""
    ratios = ", ".join(f"{v} in {k}" for k, v in (prune.get("ratios") or {}).items())
    if ratios and not prune.get("ratio"):
        return f"channels ({ratios})"
    return f"{prune.get('ratio')} of the channels per group" + (f" ({ratios})" if ratios else "")


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
            notes.append(f"params `{block}.{key}` is {cell(current)} but the metrics were produced with "
                         f"{cell(recorded)}: re-run the pipeline (`dvc repro`) before trusting this report.")
    return notes


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
    text = render_report(metrics, params or {}, {k: relative_link(p, out_path.parent) for k, p in plot_paths.items()})
    write_text(out_path, text)
    return text


def _gmacs(value: float | None) -> str:
    return "not measured" if value is None else f"{value} GMAC/s"


def _all_goals(prune: dict, quant: dict, perf: dict, with_source: bool = False) -> list:
    """Every goal: prune.json targets, quantize.json targets, then the performance goals."""
    items = [("prune.json", k, g) for k, g in (prune.get("targets") or {}).items()]
    items += [("quantize.json", k, g) for k, g in (quant.get("targets") or {}).items()]
    items += [("benchmark.json", k, g) for k, g in perf.items()]
    return items if with_source else [g for _, _, g in items]



def render_report(metrics: dict[str, dict], params: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """REPORT.md text from `load_metrics` output; `plots` maps PLOT_FILES keys to relative paths."""
    report = _Report(metrics, params, plots)
    out: list[str] = ["# edgecompress report", ""]
    for title, section in zip(SECTIONS, (_summary, _results, _distillation, _pruning, _quantization, _speedups,
                                         _goals, _params_used, _environment, _plots, _notes)):
        out += [f"## {title}", ""] + section(report)
    return "\n".join(out).rstrip() + "\n"


def _summary(r: _Report) -> list[str]:
    teacher, distill, prune = r.metrics["teacher"], r.metrics["distill"], r.metrics["prune"]
    bench, goals = r.bench, r.goals
    final = goals["final_speedup_vs_teacher"]["variant"]
    t_size = (measured_entry(bench, "teacher") or {}).get("size_mb", teacher.get("size_mb"))
    summary = (f"Data set: {_dataset(r.params, bench)}. The teacher ({_arch(teacher)}, {teacher['params']:,} "
               f"parameters) reaches {percent(teacher['accuracy'])}% test accuracy. The compressed chain distils it "
               f"into a {_arch(distill)} student ({percent(distill['accuracy'])}%), prunes "
               f"{_pruned_channels(prune)} by {prune.get('importance')} importance "
               f"({prune['params_before']:,} → {prune['params_after']:,} parameters, "
               f"{percent(prune['accuracy'])}% after fine-tuning)")
    if final:
        fe = bench["variants"][final]
        summary += (f" and quantizes it; the fastest fully INT8 variant, `{final}`, reaches "
                    f"{percent(fe['accuracy'])}% "
                    f"({signed_points(100 * (fe['accuracy'] - teacher['accuracy']))} points vs the teacher), runs at {latency(bench, final, '8'):.3f} ms/sample at batch 8 vs "
                    f"{_ms_value(bench, 'teacher', '8')} ms for the teacher "
                    f"({times(goals['final_speedup_vs_teacher']['value'], 1) or 'not measured'} faster) and is "
                    f"{times(goals['final_size_reduction_vs_teacher']['value'], 1) or 'not measured'} smaller "
                    f"({fe['size_mb']} MB vs {t_size} MB).")
    else:
        summary += ". No fully INT8 variant was benchmarked, so the final chain ends at the pruned FP32 model."
        r.notes.append("No fully INT8 variant (ptq_*, qat, onnx_int8) was measured in benchmark.json: the "
                       "performance goals are reported as not met.")
    every = _all_goals(prune, r.metrics["quantize"], goals)
    summary += f" {sum(g['met'] for g in every)} of {len(every)} goals are met (see Goals)."
    return [summary, ""]


def _results(r: _Report) -> list[str]:
    teacher, baseline, distill, prune = (r.metrics[k] for k in ("teacher", "student_baseline", "distill", "prune"))
    bench, b1, big = r.bench, r.b1, r.big
    t_size = (measured_entry(bench, "teacher") or {}).get("size_mb", teacher.get("size_mb"))
    sp1 = speedups(bench, b1)
    out = [f"Latency is per sample (median ± IQR over at least {bench.get('config', {}).get('repeats', '?')} "
           f"timed calls and {bench.get('config', {}).get('min_time_s', 0)} s per batch size); "
           f"speedup is teacher latency / variant latency at batch {b1}; size reduction is teacher size / "
           "variant size.", ""]
    rows = []
    arch_of = {"teacher": _arch(teacher), "student_baseline": _arch(baseline), "student": _arch(distill)}
    for name in ordered_variants(bench):
        entry = bench["variants"][name]
        if "skipped" in entry:
            rows.append([entry.get("stage"), f"`{name}`", f"skipped: {entry['skipped']}"] + [None] * 8)
            r.notes.append(f"Benchmark variant `{name}` was skipped: {entry['skipped']}.")
            continue
        model = arch_of.get(name, f"{_arch(prune)}, pruned") + f" · {entry.get('format', '?')}"
        size = entry.get("size_mb")
        # TorchScript/ONNX artifacts are not counted by the benchmark: same network as prune.json's model
        derived = name not in arch_of
        n_params = entry.get("params") if entry.get("params") is not None or not derived else prune.get("params")
        n_macs = entry.get("macs") if entry.get("macs") is not None or not derived else prune.get("macs")
        rows.append([entry.get("stage"), f"`{name}`", model,
                     None if n_params is None else f"{n_params / 1e6:.3f}",
                     None if n_macs is None else f"{n_macs / 1e6:.2f}",
                     size, percent(entry.get("accuracy")), _ms(bench, name, b1), _ms(bench, name, big),
                     times((sp1.get(name) or {}).get("vs_teacher")), times(ratio(t_size, size))])
    return out + markdown_table(["Stage", "Variant", "Model", "Params (M)", "MACs (M)", "Size (MB)", "Accuracy (%)",
                                 f"ms/sample b{b1}", f"ms/sample b{big}", f"Speedup vs teacher (b{b1})",
                                 "Size reduction vs teacher"], rows)


def _distillation(r: _Report) -> list[str]:
    teacher, baseline, distill = r.metrics["teacher"], r.metrics["student_baseline"], r.metrics["distill"]
    gain = 100 * (distill["accuracy"] - baseline["accuracy"])
    out = [f"Loss: alpha·T²·KL(teacher‖student at T) + (1 − alpha)·CE with alpha = {distill.get('alpha')} and "
           f"T = {distill.get('temperature')}; the baseline trains the same {_arch(baseline)} student with "
           f"the same epochs ({baseline.get('epochs')}) and no teacher.", ""]
    out += markdown_table(["Model", "Test accuracy (%)", "Val accuracy (%)"], [
        ["teacher", percent(teacher["accuracy"]), percent(teacher.get("val_accuracy"))],
        ["student, no teacher (baseline)", percent(baseline["accuracy"]), percent(baseline.get("val_accuracy"))],
        ["student, distilled", percent(distill["accuracy"]), percent(distill.get("val_accuracy"))]])
    if round(gain, 2) > 0:
        return out + [f"KD gain: **{signed_points(gain)} points** of test accuracy over the no-teacher baseline.", ""]
    r.notes.append(f"Knowledge distillation did not help: {signed_points(gain)} points vs the no-teacher baseline.")
    return out + [f"KD gain: **{signed_points(gain)} points**. KD did not help here: the distilled student is not more "
                  "accurate than the baseline trained without a teacher.", ""]


def _pruning(r: _Report) -> list[str]:
    return pruning_lines(r.metrics["prune"], r.bench, r.b1, r.notes)


def _quantization(r: _Report) -> list[str]:
    qvars = r.metrics["quantize"]["variants"]
    fp32 = qvars.get("fp32", {})
    out = [f"Every variant is reloaded from its artifact and evaluated on the test split; deltas and agreement "
           f"(same predicted class) are against the FP32 pruned model ({percent(fp32.get('accuracy'))}%, "
           f"{fp32.get('size_mb')} MB file, {fp32.get('weights_mb')} MB weights).", ""]
    rows = []
    for name, entry in qvars.items():
        if name == "fp32":
            continue
        if "skipped" in entry:
            rows.append([f"`{name}`", f"skipped: {entry['skipped']}"] + [None] * 6)
            r.notes.append(f"Quantization variant `{name}` was skipped: {entry['skipped']}.")
            continue
        layers = entry.get("layers", {})
        rows.append([f"`{name}`", percent(entry.get("accuracy")), signed_points(entry["accuracy_delta_points"])
                     if entry.get("accuracy_delta_points") is not None else None,
                     percent(entry.get("agreement_with_fp32")), entry.get("size_mb"), entry.get("weights_mb"),
                     f"{layers.get('quantized', '?')} / {layers.get('float', '?')}",
                     _settings(entry.get("settings", {}))])
    out += markdown_table(["Variant", "Accuracy (%)", "Δ vs FP32 (points)", "Agreement with FP32 (%)", "Size (MB)",
                           "Weights (MB)", "Quantized / float layers", "Settings"], rows)
    notes = _quantization_notes(r, qvars, fp32)
    return out + [f"- {n}" for n in notes] + ([""] if notes else [])


def _quantization_notes(r: _Report, qvars: dict, fp32: dict) -> list[str]:
    """Dynamic quantization's float layers, the FP16 compute mode, ONNX fidelity, file vs weights size."""
    notes = []
    dyn = qvars.get("dynamic", {})
    if "layers" in dyn:
        lay = dyn["layers"]
        line = (f"Dynamic quantization: {lay.get('quantized')} layer(s) quantized "
                f"({_layer_counts(lay.get('quantized_layers', {}))}), {lay.get('float')} left in float "
                f"({_layer_counts(lay.get('float_layers', {}))}).")
        if lay.get("float_layers", {}).get("Conv2d"):
            line += (" PyTorch dynamic quantization covers Linear (and RNN) layers only, so every Conv2d stays "
                     "float32: this variant is not INT8 end to end.")
            r.notes.append(f"Dynamic quantization does not apply to Conv2d: {lay['float_layers']['Conv2d']} Conv2d "
                           "layers stay float32.")
        notes.append(line)
    notes += [gate_note(qvars)] if any("gate" in e for e in qvars.values()) else []
    fp16 = qvars.get("fp16", {})
    if "settings" in fp16:
        notes.append(f"FP16 compute mode: {fp16['settings'].get('compute', 'not recorded')}.")
    for name, entry in qvars.items():  # the FP32 exports (onnx_fp32, openvino_fp32) against torch
        if entry.get("max_abs_logit_diff_vs_torch") is not None:
            notes.append(f"`{name}` vs PyTorch FP32: max |logit difference| = "
                         f"{entry['max_abs_logit_diff_vs_torch']:.3g} on the calibration inputs.")
    ts = [(n, e) for n, e in qvars.items() if n != "fp32" and str(e.get("artifact", "")).endswith(".ts")
          and e.get("weights_mb") is not None and "skipped" not in e]
    if ts and fp32.get("weights_mb") and fp32.get("size_mb"):
        ratios = ", ".join(f"`{n}` {e['size_mb'] / fp32['size_mb']:.2f} file / "
                           f"{e['weights_mb'] / fp32['weights_mb']:.2f} weights" for n, e in ts)
        notes.append(f"Size ratios: a TorchScript file holds serialized code and metadata beside the weights "
                     f"(the FP32 file is {fp32['size_mb']} MB for {fp32['weights_mb']} MB of weights); on a model "
                     f"this small that fixed part weighs, so file-size ratios understate the weight compression. "
                     f"Ratio vs FP32, file / weights payload: {ratios}.")
    return notes


def _speedups(r: _Report) -> list[str]:
    bench = r.bench
    sp8 = speedups(bench, "8")
    best_fp32 = next((v["best_fp32"] for v in sp8.values() if v.get("best_fp32")), None)
    out = [f"Per-sample latency at batch 8; a speedup is reference latency / variant latency. References: eager "
           f"FP32 `pruned` ({_ms_value(bench, 'pruned', '8')} ms), the best FP32 runtime "
           f"`{best_fp32 or 'none'}` ({_ms_value(bench, best_fp32, '8')} ms) and the teacher "
           f"({_ms_value(bench, 'teacher', '8')} ms).", ""]
    pairs = [f"`{n}` {times(x)} `{f}`" + (" (slower than its own FP32)" if x < 1 else "")
             for n, f, x in same_runtime_speedups(sp8)]
    return out + markdown_table(
        ["Variant", "ms/sample b8", "vs eager FP32 pruned", "vs best FP32 runtime", "vs teacher"],
        [[f"`{n}`", _ms(bench, n, "8"), times(v["vs_pruned_eager"]), times(v["vs_best_fp32"]),
          times(v["vs_teacher"])] for n, v in sp8.items()]) + (
        ["", "INT8 against the same runtime's FP32 at batch 8: " + ", ".join(pairs) + "."] if pairs else [])


def _goals(r: _Report) -> list[str]:
    prune, quant = r.metrics["prune"], r.metrics["quantize"]
    rows, missed = [], []
    for source, key, g in _all_goals(prune, quant, r.goals, with_source=True):
        label = f"`{key}`" + (f" (`{g['variant']}`)" if g.get("variant") else "")
        rows.append([source, label, g.get("goal"), _num(g.get("value")), "✅" if g.get("met") else "❌"])
        if not g.get("met"):
            missed.append(f"Goal `{key}` not met: {_num(g.get('value'))} (goal: {g.get('goal')}).")
    for name, data in (("prune.json", prune), ("quantize.json", quant)):
        if "targets" not in data:
            r.notes.append(f"{name} records no targets: its goals are missing from this report (re-run that stage).")
    out = markdown_table(["Source", "Goal", "Target", "Value", "Met"], rows)
    if not missed:
        return out + [f"All {len(rows)} goals are met.", ""]
    r.notes.append(f"{len(missed)} goal(s) not met; the Goals section lists each with its number.")
    return out + [f"**Not met ({len(missed)}):**", ""] + [f"- {m}" for m in missed] + [""]


def _params_used(r: _Report) -> list[str]:
    distill, prune = r.metrics["distill"], r.metrics["prune"]
    qcfg = r.metrics["quantize"].get("config", {})
    used = [("distill", "alpha", distill.get("alpha")), ("distill", "temperature", distill.get("temperature")),
            ("prune", "ratio", prune.get("ratio")), ("prune", "ratios", prune.get("ratios")),
            ("prune", "round_to", prune.get("round_to")), ("prune", "importance", prune.get("importance")),
            ("prune", "global", prune.get("global")), ("prune", "iterative_steps", prune.get("iterative_steps")),
            ("prune", "finetune_kd", prune.get("finetune_kd")),
            ("quantize", "backends", qcfg.get("backends")),
            ("quantize", "calibration_samples", qcfg.get("calibration_samples")),
            ("quantize", "calibration_batch_size", qcfg.get("calibration_batch_size")),
            ("quantize", "qat_epochs", qcfg.get("qat_epochs"))]
    used = [u for u in used if u[2] is not None]
    bench_cfg = [("benchmark", k, v) for k, v in r.bench.get("config", {}).items()]
    r.notes += _param_mismatches(r.params, used)
    return (["As recorded in the metrics files (what produced these numbers).", ""]
            + markdown_table(["Block", "Key", "Value"], [list(u) for u in used + bench_cfg]))


def _environment(r: _Report) -> list[str]:
    bench, b1, big = r.bench, r.b1, r.big
    env, roof = bench.get("environment", {}), bench.get("roofline", {})
    out = markdown_table(["Key", "Value"], [[k, v] for k, v in env.items()])
    if roof:
        where = roof.get("device") or f"{roof.get('threads', '?')} thread(s)"
        out += [f"Roofline (measured peak, {where}, {roof.get('size', '?')}² matmul): "
                f"FP32 {_gmacs(roof.get('fp32_gmacs'))}"
                + (f", FP16 {_gmacs(roof['fp16_gmacs'])}" if roof.get("fp16_gmacs") else "")
                + f", INT8 {_gmacs(roof.get('int8_gmacs'))}"
                + (f" ({roof['int8_method']})" if roof.get("int8_method") else "") + ".", ""]
    out += contention_lines(bench, r.notes)
    cuda = env.get("device") == "cuda"
    rows = []
    for name in ordered_variants(bench):
        entry = measured_entry(bench, name)
        if entry is None:
            continue
        gm, rf = entry.get("achieved_gmacs", {}), entry.get("roofline_fraction", {})
        rows.append([f"`{name}`", gm.get(b1), percent(rf.get(b1), 1, "%"), gm.get(big), percent(rf.get(big), 1, "%"),
                     entry.get("peak_rss_mb"), entry.get("compile_s")] + ([entry.get("peak_gpu_mb")] if cuda else []))
    return out + markdown_table(["Variant", f"GMAC/s b{b1}", f"Roofline b{b1}", f"GMAC/s b{big}", f"Roofline b{big}",
                                 "Peak RSS (MB)", "Compile (s)"] + (["Peak GPU (MB)"] if cuda else []), rows)


def _plots(r: _Report) -> list[str]:
    captions = {"pareto": "Accuracy vs batch-1 latency (Pareto front)", "accuracy": "Accuracy per variant",
                "size": "Size per variant", "latency": f"Latency at batch {r.b1} and {r.big}",
                "batch_size_analysis": "Batch-size analysis", "static_quant_analysis": "Static INT8 configs"}
    out = []
    for key, caption in captions.items():
        if key in r.plots:
            out += [f"![{caption}]({r.plots[key]})", ""]
    return out


def _notes(r: _Report) -> list[str]:
    return [f"- {n}" for n in dict.fromkeys(r.notes)] if r.notes else ["- Every method applied and every goal is met."]
