"""Zoo report and plots from metrics dicts: goals judged only on real weights, random weights and
skipped configs labelled, every plot a PNG."""

from __future__ import annotations

from pathlib import Path

from edgecompress.zoo import report as zoo_report
from edgecompress.zoo.measure import DYNAMIC_NOTE
from edgecompress.io import write_json


def timing(ms: float) -> dict:
    return {"latency_ms": {"1": {"median": ms, "iqr": 0.1}, "8": {"median": ms / 2, "iqr": 0.1}}}


def metrics() -> tuple[dict, dict]:
    zoo = {"batch_sizes": [1, 8], "threads": 2, "timing": {"warmup": 1, "repeats": 3, "min_time_s": 0},
           "images": {"root": "imgs", "count": 100, "classes": 100, "available": 500, "class_list": "timm"},
           "environment": {"cpu": "test CPU", "torch": "2.x"},
           "models": {
               "mobilenet_v2": {"random_weights": False, "top1": 0.82, "top5": 0.96, "top1_interval95": [0.73, 0.89],
                                "published": {"top1": 71.878, "top5": 90.286}, "top1_minus_published_points": 10.12,
                                "published_in_interval": False, "params": 3_500_000, "macs": 300_000_000,
                                "size_mb": 14.26, **timing(14.0)},
               "swin_t": {"random_weights": True, "top1": 0.0, "top5": 0.01, "top1_interval95": [0.0, 0.04],
                          "published": None, "params": 28_000_000, "macs": 4_500_000_000, "size_mb": 113.4,
                          **timing(80.0)}}}
    int8 = {"top1_agreement": 0.95, "sqnr_db": 12.1, "layers": {"quantized": 53, "float": 0}, "size_mb": 3.9}
    quant = {"static_configs": ["x86", "custom"], "static_batch_size": 8, "batch_sizes": [1, 8],
             "dynamic_note": DYNAMIC_NOTE,  # as zoo_quantize writes it
             "calibration": {"images": 16, "batches": 1, "batch_size": 16},
             "models": {
                 "mobilenet_v2": {"fp32": timing(12.0),  # re-timed next to the quantized models
                                  "dynamic": {"layers": {"quantized": 1, "float": 52}, "top1": 0.82, "size_mb": 10.4,
                                              **timing(15.0)},
                                  "static": {"x86": {**int8, "top1": 0.80, **timing(4.0)},
                                             "custom": {**int8, "top1": 0.79, **timing(3.0)}}},
                 "swin_t": {"dynamic": {"skipped": "running the dynamically quantized model failed (TypeError)"},
                            "static": {"x86": {"skipped": "FX graph-mode static quantization (x86) failed"},
                                       "custom": {**int8, "top1": 0.0, **timing(40.0)}}}}}
    return zoo, quant


def test_goals_only_for_real_weights() -> None:
    goals = zoo_report.zoo_goals(*metrics())
    assert set(goals) == {"mobilenet_v2: top-1 vs published", "mobilenet_v2: best static INT8 (x86) vs FP32"}
    assert goals["mobilenet_v2: top-1 vs published"] == {"value": 10.12, "goal": goals["mobilenet_v2: top-1 vs published"]["goal"], "met": False}
    assert goals["mobilenet_v2: best static INT8 (x86) vs FP32"]["met"] and \
        abs(goals["mobilenet_v2: best static INT8 (x86) vs FP32"]["value"] - 2.0) < 1e-9


def test_report_and_plots(tmp_path: Path) -> None:
    zoo, quant = metrics()
    write_json(tmp_path / "zoo.json", zoo)
    write_json(tmp_path / "quant.json", quant)
    zoo_report.plot_accuracy_vs_latency(zoo, tmp_path / "plots" / "zoo_accuracy_vs_latency.png")
    paths = zoo_report.write_plots(zoo, quant, tmp_path / "plots")
    for path in [tmp_path / "plots" / "zoo_accuracy_vs_latency.png", *paths.values()]:
        assert path.read_bytes()[:4] == b"\x89PNG", path
    text = zoo_report.build_report(tmp_path / "zoo.json", tmp_path / "quant.json", tmp_path / "plots",
                                   tmp_path / "REPORT.md")
    assert text == (tmp_path / "REPORT.md").read_text()
    assert "**Random weights (untrained): swin_t.**" in text and "| swin_t (random weights) |" in text
    assert "| mobilenet_v2 | 82.0 | 73.0–89.0 | 96.0 | 71.9 | 10.12 | no | 3.50 | 0.30 | 14.3 | 14.00 | 7.00 |" in text
    assert "| mobilenet_v2 | 1 INT8 / 52 float | 82.0 | 82.0 | 14.3 → 10.4 | 12.00 → 15.00 | 6.00 → 7.50 |" in text
    assert "| mobilenet_v2 | custom | 82.0 → 79.0 | 95.0 | 12.1 | 53 INT8 / 0 float | 14.3 → 3.9 | 6.00 → 1.50 | 4.00× |" in text
    assert "skipped: FX graph-mode static quantization (x86) failed" in text
    assert "| mobilenet_v2: top-1 vs published | 10.12 points |" in text and "](plots/static_quant_analysis.png)" in text
