"""REPORT.md and the benchmark plots, built from the fixture metrics set in tests/fixtures/report/.

The fixture's prune/quantize/teacher/student files are copies of a real run; benchmark.json is
hand-written (see the fixture's README). Expected numbers are either read from the fixture files and
formatted the way the report formats them, or computed by hand from the fixture values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgecompress import EdgecompressError
from edgecompress.quantize.config import is_int8_variant
from edgecompress.report import chain as report
from edgecompress.report import chain_metrics, chain_plots

FIXTURE = Path(__file__).parent / "fixtures" / "report"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMS = {"data": {"name": "digits", "max_samples": None},
          "dataset": {"name": "digits", "splits": {"train": 1257, "val": 270, "test": 270}},
          "distill": {"alpha": 0.7, "temperature": 4.0}, "prune": {"ratio": 0.2, "importance": "l1"}}


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURE / f"{name}.json").read_text())


def copy_fixture(dest: Path, changes: dict[str, callable] | None = None) -> Path:
    """Copy the fixture set into `dest`, applying `changes[name](data)` to the named files."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in FIXTURE.glob("*.json"):
        data = json.loads(path.read_text())
        if changes and path.stem in changes:
            changes[path.stem](data)
        (dest / path.name).write_text(json.dumps(data))
    return dest


def table_row(text: str, first_cells: str) -> str:
    """The markdown table line that starts with `| {first_cells} |`."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cells} |")]
    assert len(rows) == 1, f"expected one row starting with {first_cells!r}, found {rows}"
    return rows[0]


def section(text: str, heading: str) -> str:
    """The body of `## heading` up to the next section."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build_report on the fixture, once: (returned text, out dir)."""
    out = tmp_path_factory.mktemp("report")
    chain_plots.write_plots(chain_metrics.load_metrics(FIXTURE)["benchmark"], out / "plots")
    text = report.build_report(FIXTURE, out / "plots", out / "REPORT.md", params=PARAMS)
    return text, out


# ----------------------------------------------------------------------------------------------
# REPORT.md
def test_report_is_written_and_has_every_section(built):
    text, out = built
    assert (out / "REPORT.md").read_text() == text
    assert text.startswith("# edgecompress report\n")
    for heading in ("Summary", "Results", "Knowledge distillation", "Pruning", "Quantization", "Speedups", "Goals",
                    "Parameters used", "Environment and roofline", "Plots", "Notes"):
        assert f"\n## {heading}\n" in text, heading
    assert not list(out.glob(".*.tmp")), "atomic write left a temporary file"


def test_report_numbers_come_from_the_fixture(built):
    text, _ = built
    teacher, baseline, distill = fixture_json("teacher"), fixture_json("student_baseline"), fixture_json("distill")
    prune, bench = fixture_json("prune"), fixture_json("benchmark")

    row = cells(table_row(text, "teacher | `teacher`"))
    assert row[6] == f"{100 * teacher['accuracy']:.2f}" == "99.26"
    lat = bench["variants"]["teacher"]["latency_ms"]
    assert row[7] == f"{lat['1']['median']:.3f} ± {lat['1']['iqr']:.3f}" == "2.900 ± 0.100"
    assert row[8] == f"{lat['16']['median']:.3f} ± {lat['16']['iqr']:.3f}" == "1.950 ± 0.050"
    assert row[3] == f"{teacher['params'] / 1e6:.3f}" and row[4] == f"{teacher['macs'] / 1e6:.2f}"

    onnx = cells(table_row(text, "quantize | `onnx_int8`"))
    assert onnx[9] == f"{2.9 / 0.18:.2f}×"          # batch-1 speedup vs teacher, by hand
    assert onnx[10] == f"{1.9369 / 0.092:.2f}×"      # size reduction vs teacher, by hand

    gain = 100 * (distill["accuracy"] - baseline["accuracy"])
    gain_text = f"{0.0 if round(gain, 2) == 0 else round(gain, 2):+.2f} points"
    assert f"KD gain: **{gain_text}**" in text
    assert ("KD did not help here" in text) == (round(gain, 2) <= 0)
    assert "alpha = 0.7" in text and "T = 4.0" in text

    params_row = cells(table_row(text, "parameters"))
    assert params_row[1:3] == [f"{prune['params_before']:,}", f"{prune['params_after']:,}"] == ["68,786", "41,293"]
    assert cells(table_row(text, "right after pruning (no fine-tuning)"))[1] == \
        f"{100 * prune['accuracy_after_pruning']:.2f}"

    assert "**digits** (1,797 images: 1,257 train / 270 val / 270 test)" in text
    assert "FP32 95.1 GMAC/s, INT8 180.2 GMAC/s" in text


def test_every_goal_row_is_present_with_its_verdict(built):
    text, _ = built
    goals = {**fixture_json("prune")["targets"], **fixture_json("quantize")["targets"],
             **chain_metrics.performance_goals(fixture_json("benchmark"))}
    assert len(goals) == 16
    goal_rows = [line for line in section(text, "Goals").splitlines()
                 if line.startswith("| ") and "`" in line]
    assert len(goal_rows) == len(goals)
    for key, goal in goals.items():
        row = [r for r in goal_rows if f"`{key}`" in r]
        assert len(row) == 1, key
        assert cells(row[0])[-1] == ("✅" if goal["met"] else "❌"), key
        if not goal["met"]:
            assert f"Goal `{key}` not met: {goal['value']:.4g}" in text
    assert "9 of 16 goals are met" in text


def test_skipped_variant_row_and_notes(built):
    text, _ = built
    reason = fixture_json("benchmark")["variants"]["ptq_qnnpack"]["skipped"]
    row = cells(table_row(text, "quantize | `ptq_qnnpack`"))
    assert row[2] == f"skipped: {reason}"
    assert f"`ptq_qnnpack` was skipped: {reason}" in section(text, "Notes")
    assert "21 Conv2d layers stay float32" in text            # from quantize.json's dynamic layer counts
    assert "FP16 compute mode: native fp16 on CPU" in text
    assert "max |logit difference| = 7.63e-06" in text


def test_no_missing_values_in_table_cells(built):
    text, _ = built
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) > 60
    for line in table_lines:
        for cell in cells(line):
            assert not re.search(r"\b(nan|NaN|None|null|inf)\b", cell), line  # "none" is a real engine name


def test_plots_are_embedded_relative_to_the_report(built):
    text, out = built
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["plots/pareto.png", "plots/accuracy.png", "plots/size.png", "plots/latency.png",
                     "plots/batch_size_analysis_combined.png", "plots/static_quant_analysis.png"]
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_SIGNATURE


def test_kd_gain_positive_and_skipped_quantize_variant(tmp_path):
    def better_student(d):
        d["accuracy"] = 0.992593

    def skip_qat(q):
        q["variants"]["qat"] = {"skipped": "quantize.qat_epochs is 0"}
        del q["targets"]["qat_accuracy_drop_points"], q["targets"]["qat_size_ratio"]

    metrics = chain_metrics.load_metrics(copy_fixture(tmp_path, {"distill": better_student, "quantize": skip_qat}))
    text = report.render_report(metrics, {}, {})
    assert "KD gain: **+1.11 points**" in text                 # 100 * (0.992593 - 0.981481)
    assert "KD did not help" not in text
    assert cells(table_row(section(text, "Quantization"), "`qat`"))[1] == "skipped: quantize.qat_epochs is 0"
    assert "Quantization variant `qat` was skipped: quantize.qat_epochs is 0." in text


def test_params_that_differ_from_the_metrics_are_flagged(tmp_path):
    text = report.render_report(chain_metrics.load_metrics(FIXTURE), {"prune": {"ratio": 0.5}}, {})
    assert "params `prune.ratio` is 0.5 but the metrics were produced with 0.2" in text


def test_values_the_benchmark_leaves_empty_never_print_none(tmp_path):
    """bench.py records params/macs None for TorchScript/ONNX, int8_gmacs None without an INT8 GEMM,
    compile_s None and cuda as a mapping: the report fills or dashes them, never prints None."""
    def as_bench_writes(b):
        for name in ("ptq_x86", "onnx_int8"):
            b["variants"][name].update(params=None, macs=None)
        b["roofline"].update(int8_gmacs=None, int8_method=None)
        b["variants"]["pruned_compiled"]["compile_s"] = None
        b["environment"]["cuda"] = {"version": "13.0", "device_name": "test GPU"}

    text = report.render_report(chain_metrics.load_metrics(copy_fixture(tmp_path, {"benchmark": as_bench_writes})), {}, {})
    assert "None" not in text and "nan" not in text
    row = cells(table_row(text, "quantize | `onnx_int8`"))
    prune = fixture_json("prune")
    assert row[3:5] == [f"{prune['params'] / 1e6:.3f}", f"{prune['macs'] / 1e6:.2f}"]
    assert "INT8 not measured" in text


def test_missing_targets_are_noted(tmp_path):
    metrics = chain_metrics.load_metrics(copy_fixture(tmp_path, {"prune": lambda p: p.pop("targets")}))
    text = report.render_report(metrics, {}, {})
    assert "prune.json records no targets" in text
    assert "`mac_reduction`" not in text


# ----------------------------------------------------------------------------------------------
# Numbers
def test_speedups_match_hand_computed_values():
    bench = fixture_json("benchmark")
    sp = chain_metrics.speedups(bench, "8")
    assert "ptq_qnnpack" not in sp                               # skipped
    onnx = sp["onnx_int8"]
    assert onnx["latency_ms"] == 0.085
    assert onnx["best_fp32"] == "onnx_fp32"                      # 0.12 < pruned_compiled 0.22 < pruned 0.30
    assert onnx["vs_pruned_eager"] == pytest.approx(0.30 / 0.085)
    assert onnx["vs_best_fp32"] == pytest.approx(0.12 / 0.085)
    assert onnx["vs_teacher"] == pytest.approx(2.0 / 0.085)
    assert sp["pruned"]["vs_pruned_eager"] == pytest.approx(1.0)
    assert sp["teacher"]["vs_teacher"] == pytest.approx(1.0)
    one = chain_metrics.speedups(bench, batch="1")
    assert one["ptq_x86"]["vs_teacher"] == pytest.approx(2.9 / 0.21)
    assert one["pruned_compiled"]["vs_pruned_eager"] == pytest.approx(0.48 / 0.36)


def test_pruning_section_states_latency_reduction_and_realised_fraction(built):
    text, _ = built
    section = text.split("## Pruning")[1].split("## Quantization")[0]
    assert "MACs removed: 41.4%" in section
    # best FP32 runtime at batch 8: 0.16 -> 0.12 ms, 25.0% removed, realised 0.25 / 0.4142
    assert "| best FP32 runtime (`onnx_fp32`) | 8 | 0.160 | 0.120 | 25.0% | 0.6036 |" in section
    assert "| best INT8 runtime (`onnx_int8`) | 8 | 0.100 | 0.085 | 15.0% | 0.3622 |" in section
    assert "| eager PyTorch (`pruned`) | 1 | 0.610 | 0.480 | 21.3% | 0.5145 |" in section


def test_pruning_steps_table_and_missing_latency_block(tmp_path):
    steps = [{"step": 0, "params": 100, "macs": 1000, "channels": 10, "latency_ms": 0.2, "val_accuracy": 0.99},
             {"step": 1, "params": 60, "macs": 600, "channels": 8, "latency_ms": 0.15, "val_accuracy": 0.5}]

    def with_steps(p):
        p.update(step_records=steps, target={"kind": "latency", "value": 0.8}, target_met=True,
                 latency={"runtime": "openvino_fp32", "batch_size": 8})
    metrics = chain_metrics.load_metrics(copy_fixture(tmp_path, {"prune": with_steps,
                                                                 "benchmark": lambda b: b.pop("pruning")}))
    text = report.render_report(metrics, {}, {})
    assert "`prune.target` latency ≤ 0.8 × unpruned, met; latency on openvino_fp32 at batch 8" in text
    assert "| 1 | 600 | 0.600 | 0.15 | 0.750 | 50.00 |" in text
    assert "benchmark.json has no pruning latency block" in text
    assert chain_metrics.performance_goals(metrics["benchmark"])["pruning_realised_fraction"]["value"] is None


def test_best_fp32_runtime_ignores_skipped_variants():
    bench = fixture_json("benchmark")
    bench["variants"]["onnx_fp32"] = {"stage": "quantize", "skipped": "onnxruntime missing"}
    sp = chain_metrics.speedups(bench, "8")
    assert sp["onnx_int8"]["best_fp32"] == "pruned_compiled"
    assert sp["onnx_int8"]["vs_best_fp32"] == pytest.approx(0.22 / 0.085)


def test_performance_goals_match_hand_computed_values():
    goals = chain_metrics.performance_goals(fixture_json("benchmark"))
    int8 = {k: g for k, g in goals.items() if k != "pruning_realised_fraction"}
    assert {g["variant"] for g in int8.values()} == {"onnx_int8"}    # fastest INT8 at batch 8 (0.085 ms)
    assert goals["pruning_realised_fraction"]["variant"] == "onnx_fp32"  # the pruned model's best FP32 runtime
    expected = {"int8_speedup_vs_pruned_eager": (0.30 / 0.085, True),      # 3.53 >= 3
                "int8_speedup_vs_best_fp32": (0.12 / 0.085, False),        # 1.41 < 1.5
                "final_speedup_vs_teacher": (2.0 / 0.085, True),           # 23.5 >= 8
                "final_size_reduction_vs_teacher": (1.9369 / 0.092, True),  # 21.1 >= 10
                "final_accuracy_loss_points": (0.0, True),                 # 99.2593 - 99.2593
                "pruning_realised_fraction": (0.6036, False)}              # 0.25 / 0.4142 (4 digits) < 0.7
    assert set(goals) == set(expected)
    for key, (value, met) in expected.items():
        assert goals[key]["value"] == pytest.approx(value, abs=1e-6), key
        assert goals[key]["met"] is met, key
        assert set(goals[key]) >= {"value", "goal", "met", "variant"}
    assert goals["int8_speedup_vs_best_fp32"]["reference"] == "onnx_fp32"


def test_dynamic_is_never_the_best_int8_variant():
    bench = fixture_json("benchmark")
    bench["variants"]["dynamic"]["latency_ms"]["8"]["median"] = 0.001
    goals = chain_metrics.performance_goals(bench)
    assert goals["final_speedup_vs_teacher"]["variant"] == "onnx_int8"


def test_performance_goals_without_int8_are_not_met():
    bench = fixture_json("benchmark")
    for name in list(bench["variants"]):
        if is_int8_variant(name):
            bench["variants"][name] = {"stage": "quantize", "skipped": "test"}
    goals = chain_metrics.performance_goals(bench)
    goals.pop("pruning_realised_fraction")  # an FP32 figure: INT8 variants do not enter it
    assert all(g["value"] is None and g["met"] is False for g in goals.values())


# ----------------------------------------------------------------------------------------------
# Plots and errors
def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, f"{path}: only {len(data)} bytes"


@pytest.mark.parametrize("plot", [chain_plots.plot_pareto, chain_plots.plot_batch_size_analysis,
                                  chain_plots.plot_static_quant_analysis])
def test_plot_functions_write_png(tmp_path, plot):
    path = tmp_path / "sub" / f"{plot.__name__}.png"
    plot(fixture_json("benchmark"), path)
    assert_png(path)


def test_plot_bars_writes_three_pngs(tmp_path):
    chain_plots.plot_bars(fixture_json("benchmark"), tmp_path)
    for name in ("accuracy.png", "size.png", "latency.png"):
        assert_png(tmp_path / name)


@pytest.mark.parametrize("name", chain_metrics.METRICS_FILES)
def test_missing_metrics_file_is_named(tmp_path, name):
    metrics_dir = copy_fixture(tmp_path / "metrics")
    (metrics_dir / f"{name}.json").unlink()
    with pytest.raises(EdgecompressError, match=re.escape(f"{name}.json")):
        report.build_report(metrics_dir, tmp_path / "plots", tmp_path / "REPORT.md", params={})
    assert not (tmp_path / "REPORT.md").exists()


def test_same_runtime_speedups_pair_each_int8_variant_with_its_runtimes_fp32():
    sp = {name: {"latency_ms": ms} for name, ms in
          {"pruned": 0.3, "ptq_x86": 0.1, "onnx_fp32": 0.2, "onnx_int8": 0.25, "openvino_fp32": 0.15,
           "openvino_int8": 0.075}.items()}
    assert chain_metrics.same_runtime_speedups(sp) == [("onnx_int8", "onnx_fp32", 0.8),
                                                       ("openvino_int8", "openvino_fp32", 2.0)]


def test_gate_note_names_each_variants_validation_drop_and_its_float_layers():
    qvars = {"fp32": {}, "ptq_x86": {"gate": {"val_drop_points": 0.0, "budget_points": 1.0, "float_layers": [],
                                              "met": True}},
             "onnx_int8": {"gate": {"val_drop_points": 1.5, "budget_points": 1.0, "float_layers": ["node_Conv_3"],
                                    "met": False, "latency_ms": {"all_int8": 0.1, "with_float_layers": 0.12}}}}
    assert chain_metrics.gate_note(qvars) == (
        "Quality gate, drop in points on the validation split (budget: 1.0): `ptq_x86` +0.00; `onnx_int8` +1.50 "
        "with 1 float layer(s) (node_Conv_3; 0.12 vs 0.1 ms/sample all-INT8) — over budget.")


def test_contended_variants_are_flagged_in_the_report(tmp_path):
    def contended(b):
        b["config"]["max_load"] = 0.25
        b["variants"]["onnx_int8"]["load"] = {"other_cpu_cores": 0.9, "steal_cores": 0.0, "attempts": 3,
                                              "contended": True}
        b["contended"] = ["onnx_int8"]
    text = report.render_report(chain_metrics.load_metrics(copy_fixture(tmp_path, {"benchmark": contended})), {}, {})
    assert "**Under contention** (> 0.25 cores of other processes or stolen CPU): `onnx_int8` (0.9 cores other" in text
    assert "Their latencies are not comparable" in text
    quiet = report.render_report(chain_metrics.load_metrics(copy_fixture(
        tmp_path / "q", {"benchmark": lambda b: b["config"].update(max_load=0.25)})), {}, {})
    assert "measured on a quiet machine (other processes and stolen CPU ≤ 0.25 cores)" in quiet
