"""Sweep report from a `dvc exp show --json` document: one row per revision with results, the
experiments' knobs and results, the plot and the table."""

from __future__ import annotations

from pathlib import Path

from edgecompress.report import sweep


def revision(name: str | None, rev: str, alpha: float, temperature: float, ratio: float, acc: float) -> dict:
    metrics = {
        "metrics/distill.json": {"data": {"accuracy": acc}},
        "metrics/prune.json": {"data": {"accuracy": acc - 0.01}},
        "metrics/benchmark.json": {"data": {"variants": {
            "ptq_x86": {"accuracy": acc - 0.01, "latency_ms": {"8": {"median": 0.2, "iqr": 0.01}}},
            "qat": {"accuracy": acc - 0.02, "latency_ms": {"8": {"median": 0.1, "iqr": 0.01}}},
            "dynamic": {"accuracy": 1.0, "latency_ms": {"8": {"median": 0.01, "iqr": 0.0}}},  # not INT8 end to end
            "fp16": {"skipped": "no"}}}},
    }
    params = {"params.yaml": {"data": {"distill": {"alpha": alpha, "temperature": temperature},
                                       "prune": {"ratio": ratio}}}}
    return {"rev": rev, "name": name, "data": {"params": params, "metrics": metrics}}


SHOWN = [
    {**revision(None, "workspace", 0.7, 4, 0.2, 0.99), "experiments": None},
    {**revision("main", "abc1234def", 0.7, 4, 0.2, 0.99), "experiments": [
        {"revs": [revision("hazy-cove", "1111111aaa", 0.1, 2, 0.2, 0.95)]},
        {"revs": [revision("bold-reef", "2222222bbb", 0.9, 4, 0.5, 0.97)]}]},
    {"rev": "0000000", "name": None, "data": {"params": {}, "metrics": {}}, "experiments": None},  # no results
]


def test_rows_cover_every_experiment_with_its_knobs() -> None:
    rows = sweep.experiment_rows(SHOWN)
    assert [r["name"] for r in rows] == ["workspace", "main", "hazy-cove", "bold-reef"]
    hazy = rows[2]
    assert (hazy["distill.alpha"], hazy["distill.temperature"], hazy["prune.ratio"]) == (0.1, 2, 0.2)
    assert hazy["distill_accuracy"] == 0.95 and round(hazy["prune_accuracy"], 6) == 0.94
    assert hazy["best_int8"] == "ptq_x86" and hazy["int8_latency_ms"] == 0.2  # dynamic is not INT8 end to end


def test_plot_and_table(tmp_path: Path) -> None:
    rows = sweep.experiment_rows(SHOWN)
    sweep.plot_sweep(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    table = sweep.sweep_table(rows)
    assert "| bold-reef | 0.9 | 4 | 0.5 | 97.00 | 96.00 | ptq_x86 | 96.00 | 0.200 (8) |" in table


def test_latency_falls_back_to_the_largest_batch() -> None:
    shown = [revision("small", "3333333ccc", 0.5, 2, 0.2, 0.9)]
    for variant in shown[0]["data"]["metrics"]["metrics/benchmark.json"]["data"]["variants"].values():
        if "latency_ms" in variant:
            variant["latency_ms"] = {"1": {"median": 0.5}, "4": {"median": 0.3}}
    row = sweep.experiment_rows(shown)[0]
    assert row["latency_batch"] == "4" and row["int8_latency_ms"] == 0.3
