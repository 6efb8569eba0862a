"""The chain report's Pruning section: the prune stage's settings, what it removed, the accuracy it
cost, its step records (MACs, latency and validation accuracy per step) and, from the benchmark, what
the MACs removed became in time on eager PyTorch and the fastest FP32 and INT8 runtimes."""

from __future__ import annotations

from edgecompress.markdown import cell, markdown_table, percent, thousands


def _num(value: float | None) -> str:
    return "not measured" if value is None else f"{value + 0.0:.4g}"


def pruning_lines(prune: dict, bench: dict, b1: str, notes: list[str]) -> list[str]:
    """The Pruning section: settings, what was removed, accuracy, the prune stage's steps and the
    benchmark's latency reduction per runtime; what deserves a note is added to `notes`."""
    ratios = "".join(f", {k} {v}" for k, v in (prune.get("ratios") or {}).items())
    out = [f"Structured channel pruning (channels physically removed) of the distilled student: ratio "
           f"{prune.get('ratio')} per group{ratios}, channel counts rounded to {cell(prune.get('round_to'))}, "
           f"{prune.get('importance')} importance, global ranking "
           f"{cell(prune.get('global'))}, {prune.get('steps', prune.get('iterative_steps'))} of "
           f"{prune.get('iterative_steps')} step(s); fine-tuned "
           f"{prune.get('epochs')} epochs{' with the distillation loss' if prune.get('finetune_kd') else ''}.", ""]
    rows = []
    for label, key, removed_key in (("channels", "channels", "channel_ratio_removed"),
                                    ("parameters", "params", "param_ratio_removed"),
                                    ("MACs", "macs", "mac_ratio_removed")):
        removed = prune.get(removed_key)
        rows.append([label, thousands(prune.get(f"{key}_before")), thousands(prune.get(f"{key}_after")),
                     None if removed is None else f"{100 * removed:.1f}%"])
    out += markdown_table(["", "Before", "After", "Removed"], rows)
    out += markdown_table(["Accuracy (%)", "Value"], [
        ["distilled student (unpruned)", percent(prune.get("accuracy_unpruned"))],
        ["right after pruning (no fine-tuning)", percent(prune.get("accuracy_after_pruning"))],
        ["after fine-tuning", percent(prune["accuracy"])]])
    slow = prune.get("fx_int8_slow_depthwise") or []
    if slow:
        notes.append(f"{len(slow)} depthwise convolution(s) of the pruned model keep a channel count above 112 that is "
                     f"not a multiple of 8 ({', '.join(f'`{n}`' for n in slow[:5])}{', …' if len(slow) > 5 else ''}): "
                     "PyTorch's x86 FX INT8 runs them on its slow path (~100× per layer, "
                     "docs/experiments/int8_depthwise_channels.py); `prune.round_to: 8` avoids it.")
    return out + _steps(prune) + _latency(bench, b1, notes)


def _steps(prune: dict) -> list[str]:
    """The prune stage's own step records: MACs, latency on its runtime and validation accuracy per step."""
    steps, target = prune.get("step_records") or [], prune.get("target") or {}
    if not steps:
        return []
    lat = prune.get("latency") or {}
    head = (f"Steps (`prune.target` {target.get('kind', 'ratio')}"
            + (f" ≤ {target['value']} × unpruned, {'met' if prune.get('target_met') else 'MISSED'}" if target.get("value")
               else "") + f"; latency on {lat.get('runtime', '?')} at batch {lat.get('batch_size', '?')}, measured by "
            "the prune stage; accuracy on the validation split before fine-tuning):")
    first = steps[0]
    rows = [[s["step"], thousands(s["macs"]), f"{s['macs'] / first['macs']:.3f}",
             _num(s.get("latency_ms")), None if "latency_ms" not in s else f"{s['latency_ms'] / first['latency_ms']:.3f}",
             percent(s.get("val_accuracy"))] for s in steps]
    return ["", head, ""] + markdown_table(["Step", "MACs", "MACs / unpruned", "ms/sample", "Latency / unpruned",
                                            "Val accuracy (%)"], rows)


def _latency(bench: dict, b1: str, notes: list[str]) -> list[str]:
    """What the MACs removed became in time, from the benchmark (unpruned student timed on the same runtimes)."""
    effect = bench.get("pruning") or {}
    pairs, macs = effect.get("pairs") or {}, effect.get("mac_reduction")
    if not pairs or macs is None:
        notes.append("benchmark.json has no pruning latency block (bench.unpruned_references is off, or the benchmark "
                     "predates it): the report cannot say what pruning bought in time.")
        return []
    labels = {"eager": "eager PyTorch", "best_fp32": "best FP32 runtime", "best_int8": "best INT8 runtime"}
    rows = []
    for role, pair in pairs.items():
        for b in dict.fromkeys((b1, "8")):
            cell_ = (pair.get("latency_ms") or {}).get(b)
            if cell_:
                rows.append([f"{labels.get(role, role)} (`{pair['variant']}`)", b, f"{cell_['unpruned_ms']:.3f}",
                             f"{cell_['pruned_ms']:.3f}", f"{100 * cell_['latency_reduction']:.1f}%",
                             _num(cell_.get("realised"))])
    return ["", f"Latency: the benchmark times the unpruned student on the runtimes where the pruned model ran "
                f"fastest. MACs removed: {100 * macs:.1f}%; realised fraction = latency reduction / MAC reduction "
                "(1.0: every MAC removed became time).", ""] + markdown_table(
        ["Runtime", "Batch", "Unpruned ms/sample", "Pruned ms/sample", "Latency removed", "Realised"], rows)
