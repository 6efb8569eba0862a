"""End to end: `dvc repro` on a tiny config, no-op second run, determinism, `dvc exp run -S` re-running
only what the changed params touch (with a teacher the user brings, taken as it is), a DVC remote and a
queued sweep."""

import json
import math
import subprocess
import time

import pytest
import torch

from conftest import TINY_PARAMS, run, write_params
from edgecompress.models import load_checkpoint

pytestmark = pytest.mark.slow

TRAIN_STAGES = ("teacher", "student_baseline", "distill", "prune")
QUANT_VARIANTS = ("ptq_x86", "ptq_custom", "dynamic", "qat", "onnx_fp32", "onnx_int8", "openvino_fp32",
                  "openvino_int8")  # conftest.TINY_PARAMS


def read_metrics(repo, name):
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def check_benchmark_and_report(repo, quant):
    """Every variant at every batch size with positive finite timings, and each variant's accuracy equal
    to what its own stage reported on the same test split; REPORT.md and the plots written."""
    bench = read_metrics(repo, "benchmark")
    stage_accuracy = {"teacher": read_metrics(repo, "teacher")["accuracy"],
                      "student_baseline": read_metrics(repo, "student_baseline")["accuracy"],
                      "student": read_metrics(repo, "distill")["accuracy"],
                      "pruned": read_metrics(repo, "prune")["accuracy"],
                      **{name: entry["accuracy"] for name, entry in quant.items()
                         if name != "fp32" and "skipped" not in entry}}
    measured = {name: entry for name, entry in bench["variants"].items() if "skipped" not in entry}
    assert set(measured) == set(stage_accuracy)
    for name, entry in measured.items():
        assert entry["accuracy"] == pytest.approx(stage_accuracy[name], abs=1e-6), name
        assert set(entry["latency_ms"]) == {"1", "4"} and set(entry["throughput"]) == {"1", "4"}, name
        for timing in entry["latency_ms"].values():
            assert math.isfinite(timing["median"]) and timing["median"] > 0 and timing["iqr"] >= 0, name
        assert entry["size_mb"] > 0 and entry["peak_rss_mb"] > 0 and entry["macs"] > 0, name
    assert bench["environment"]["threads"] == 1 and bench["roofline"]["fp32_gmacs"] > 0
    report = (repo / "REPORT.md").read_text()
    assert f"{100 * stage_accuracy['teacher']:.2f}" in report
    for plot in ("pareto", "accuracy", "size", "latency", "batch_size_analysis_combined", "static_quant_analysis"):
        assert (repo / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"plots/{plot}.png" in report, plot


def check_remote_round_trip(repo, remote, clone):
    """Artifacts through a DVC remote (a local directory here; S3/SSH are the same commands): push
    from one clone, pull into a fresh one, which then needs no re-training and no re-run."""
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    run(["git", "commit", "-qam", "dvc remote"], repo)
    # dvc.yaml as the target: the chain's outputs (the zoo pipeline's were never run in this copy)
    run(["dvc", "push", "--run-cache", "dvc.yaml"], repo)
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / "models" / "teacher.pt").exists()
    run(["dvc", "pull", "--run-cache", "dvc.yaml"], clone)
    assert (clone / "models" / "teacher.pt").read_bytes() == (repo / "models" / "teacher.pt").read_bytes()
    assert (clone / "data" / "prepared" / "meta.json").is_file()
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], clone).stdout
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout


def check_metrics_diff_in_fresh_clone(repo, clone):
    """A reviewer's clone (no DVC remote, no cache) diffs the committed metrics of two revisions: the
    metrics JSON live in git (cache: false), so benchmark and quantize values show as numbers."""
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / ".dvc" / "cache").exists()
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "--all", "--json"], clone).stdout)
    for path, key in (("metrics/benchmark.json", "variants.pruned.accuracy"),
                      ("metrics/quantize.json", "variants.ptq_x86.accuracy"),
                      ("metrics/distill.json", "alpha")):
        entry = diff[path][key]
        assert isinstance(entry["old"], (int, float)) and isinstance(entry["new"], (int, float)), (path, key, entry)
    assert diff["metrics/distill.json"]["alpha"]["old"] == 0.7 and diff["metrics/distill.json"]["alpha"]["new"] == 0.2
    assert any(key.startswith("variants.") and key.endswith(".median") for key in diff["metrics/benchmark.json"])


def test_repro_noop_determinism_and_experiment(repo_copy):
    repo = repo_copy
    write_params(repo, TINY_PARAMS)
    subprocess.run(["git", "commit", "-qam", "tiny config"], cwd=repo, check=True)

    run(["dvc", "repro"], repo)
    for name in TRAIN_STAGES:
        metrics = read_metrics(repo, name)
        assert 0 <= metrics["accuracy"] <= 1 and metrics["params"] > 0 and metrics["macs"] > 0
        assert metrics["size_mb"] > 0
        assert (repo / "plots" / name / "confusion_matrix.png").stat().st_size > 0
        assert (repo / "plots" / name / "samples.png").stat().st_size > 0
        assert (repo / "dvclive" / name / "plots" / "metrics" / "val" / "accuracy.tsv").is_file()
    for ckpt in ("teacher", "student_baseline", "student", "pruned"):
        assert (repo / "models" / f"{ckpt}.pt").is_file()
    prune = read_metrics(repo, "prune")
    assert prune["params"] < prune["params_before"] and prune["macs_after"] < prune["macs_before"]
    quant = read_metrics(repo, "quantize")["variants"]
    for name in QUANT_VARIANTS:
        entry = quant[name]
        assert "skipped" in entry or (0 <= entry["accuracy"] <= 1 and (repo / "models" / "quantized" /
                                                                         entry["artifact"]).is_file()), name
    assert quant["dynamic"]["layers"]["float_layers"].get("Conv2d", 0) > 0
    distill = read_metrics(repo, "distill")
    assert distill["alpha"] == 0.7 and distill["temperature"] == 4.0
    check_benchmark_and_report(repo, quant)

    second = run(["dvc", "repro"], repo)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    # Same params and seeds on CPU -> a bit-identical student: DVC finds nothing downstream to re-run.
    before = {name: read_metrics(repo, name) for name in TRAIN_STAGES}
    run(["dvc", "repro", "--force", "--single-item", "distill"], repo)
    assert read_metrics(repo, "distill") == before["distill"]
    assert "Running stage" not in run(["dvc", "repro"], repo).stdout

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline run"], repo)
    check_remote_round_trip(repo, repo.parent / "dvc-remote", repo.parent / "clone")
    # One experiment, two features: a teacher the user brings (issue 18: the trained teacher's weights as a
    # plain state dict, taken as they are with teacher.epochs 0) and new distillation settings.
    given = repo / "given" / "teacher_state.pt"
    given.parent.mkdir()
    torch.save(load_checkpoint(repo / "models" / "teacher.pt")[0].state_dict(), given)
    exp = run(["dvc", "exp", "run", "-S", "model.teacher.weights=given/teacher_state.pt", "-S", "teacher.epochs=0",
               "-S", "distill.alpha=0.2", "-S", "distill.temperature=2"], repo)
    assert "Running stage 'teacher'" in exp.stdout and "Running stage 'distill'" in exp.stdout
    assert "Running stage 'student_baseline'" not in exp.stdout  # prepared data unchanged: nothing to redo there
    teacher = read_metrics(repo, "teacher")
    assert teacher["accuracy"] == before["teacher"]["accuracy"] and teacher["epochs"] == 0
    assert teacher["initial_weights"]["weights"] == "state dict given/teacher_state.pt"
    changed = read_metrics(repo, "distill")
    assert changed["alpha"] == 0.2 and changed["temperature"] == 2
    assert changed["loss"] != before["distill"]["loss"]

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    assert len(shown) >= 1 and any(exp.get("experiments") for exp in shown)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert "metrics/distill.json" in diff and "alpha" in diff["metrics/distill.json"]

    # Pruning ratio: prune is the one stage whose own inputs change (the rest follow from its outputs).
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "alpha experiment applied"], repo)
    check_metrics_diff_in_fresh_clone(repo, repo.parent / "review-clone")
    # (what DVC would re-run, read from `dvc status`: the map, without paying for the run)
    write_params(repo, {"prune": {"ratio": 0.5}})
    status = json.loads(run(["dvc", "status", "dvc.yaml", "--json"], repo).stdout)
    assert set(status) == {"check_params", "prune", "report"}, status  # report quotes prune.ratio
    assert "'prune': 'modified'" in str(status["prune"]), status
    run(["git", "checkout", "params.yaml"], repo)

    # A sweep on DVC's queue: a 2-point grid queued, run by 2 parallel workers, both recorded; the
    # sweep report reads them back from `dvc exp show --json`.
    run(["dvc", "exp", "run", "--queue", "-S", "bench.repeats=3,4"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 600
    while any(state in run(["dvc", "queue", "status"], repo).stdout for state in ("Queued", "Running")):
        assert time.monotonic() < deadline, "queued experiments did not finish in 10 min"
        time.sleep(3)
    assert run(["dvc", "queue", "status"], repo).stdout.count("Success") == 2
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    queued = [rev["data"]["params"]["params.yaml"]["data"]["bench"]["repeats"]
              for entry in shown for exp in entry.get("experiments") or [] for rev in exp["revs"]
              if rev.get("data")]
    assert {3, 4} <= set(queued)
    run(["python", "stages/sweep_report.py"], repo)
    assert (repo / "plots" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "docs" / "sweep.md").read_text().count("| ") >= 4 * 9
