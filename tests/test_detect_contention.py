"""The detection timers watch the machine's load as the chain's benchmark does (issue 16): a timed pass run
while another tenant took the CPU runs again and, still contended, is flagged in the metrics row and named
in the REPORT."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress import EdgecompressError
from edgecompress.bench import contention
from edgecompress.bench.contention import LoadPolicy, contention_block
from edgecompress.config import parse_settings
from edgecompress.detection import charts, compress, inference
from edgecompress.detection.params import DetectionPipelineParams
from edgecompress.detection.report import contention_report_lines, render_report
from test_bench import FakeMachine
from test_detect_metrics import annotation, dataset, perfect

SETTINGS = {"conf_threshold": 0.25, "map_conf_threshold": 0.001, "iou_threshold": 0.45, "max_det": 10,
            "warmup_batches": 0, "agreement_points": 0.5}
TIMING = {"blocks": {"model": {"per_image_ms": 1.0}}, "inference_ms_per_image": 1.0, "total_s": 0.01}


@pytest.fixture
def fake_passes(monkeypatch: pytest.MonkeyPatch):
    """run_detector replaced by perfect predictions on one image, each pass on the scripted machine."""
    ds = dataset([annotation(7, [[10, 20, 130, 220]], [0])])
    machine = FakeMachine([0.8, 0.0, 0.8, 0.8])  # 1st pass: busy then quiet; 2nd: busy every time
    passes = []

    def fake_run(detector, paths, classes, *, batch_size, **_):
        passes.append(batch_size)
        machine.run()
        return [perfect(image) for image in ds.images], TIMING
    monkeypatch.setattr(inference, "run_detector", fake_run)
    monkeypatch.setattr(contention.time, "sleep", lambda s: None)  # wait_for_quiet: no real waiting in a test
    return ds, LoadPolicy(0.25, 1, 0, sources=machine.sources()), passes


def test_a_contended_pass_runs_again_then_its_row_is_flagged(fake_passes) -> None:
    ds, watch, passes = fake_passes
    quiet, _ = inference.evaluate_detector(None, ds, batch_size=1, **SETTINGS, watch=watch, label="m b1")
    busy, _ = inference.evaluate_detector(None, ds, batch_size=2, **SETTINGS, watch=watch, label="m b2")
    assert passes == [1, 1, 2, 2] and quiet["map_50"] == busy["map_50"] == 1.0
    assert quiet["load"]["contended"] is False and quiet["load"]["attempts"] == 2
    assert busy["load"]["contended"] is True and busy["load"]["attempts"] == 2
    # what detect_eval writes: the policy and the flagged passes by "<model> b<batch>"
    models = {"m": {"batch_sizes": {"1": quiet, "2": busy}}}
    assert contention_block(watch, charts.timed_rows(models)) == {
        "max_load": 0.25, "retries": 1, "wait_s": 0, "contended": ["m b2"]}
    unwatched, _ = inference.evaluate_detector(None, ds, batch_size=1, **SETTINGS)  # a monitoring pass
    assert "load" not in unwatched and passes[-1] == 1


def test_compressed_variants_are_watched_by_name(fake_passes) -> None:
    ds, watch, passes = fake_passes

    class Variant:
        def params(self) -> int:
            return 0
    built = {"fp32": (Variant(), {"method": "eager"}), "onnx_int8": (Variant(), {"method": "ort"}),
             "fp16": (None, {"skipped": "CUDA only"})}
    variants = compress.evaluate_variants(built, ["fp32", "onnx_int8", "fp16"], ds, batch_size=1, settings=SETTINGS,
                                          watch=watch)
    assert passes == [1, 1, 1, 1] and variants["fp16"] == {"skipped": "CUDA only"}
    assert contention_block(watch, variants)["contended"] == ["onnx_int8"]


def test_the_report_names_the_flagged_passes(tmp_path: Path) -> None:
    record = {"other_cpu_cores": 0.9, "steal_cores": 0.1, "contended": True, "attempts": 3}
    row = {"map": 0.5, "map_50": 0.6, "pycocotools": {"map": 0.5, "map_50": 0.6}, "agreement": {"agree": True},
           "operating_point": {"precision": 1.0, "recall": 1.0, "f1": 1.0}, "timing": TIMING}
    models = {"m": {"random_weights": True, "batch_sizes": {"1": row, "2": {**row, "load": record}}}}
    block = contention_block(LoadPolicy(0.25, 2, 30), charts.timed_rows(models))
    metrics = {"settings": {**SETTINGS, "threads": 1}, "models": models, "contention": block}
    text = render_report(metrics, {}, None, {}, tmp_path)
    assert ("**Under contention** (> 0.25 cores of other processes or stolen CPU): `detect_eval m b2` (0.9 cores "
            "other, 0.1 stolen, 3 attempts). Their latencies are not comparable") in text
    compressed = {"variants": {"onnx_int8": {"load": record}, "fp32": {"load": {**record, "contended": False}}},
                  "contention": {"max_load": 0.25}}
    profile = {"models": {"m": {"load": record}}, "contention": {"max_load": 0.25}}
    lines = contention_report_lines({**metrics, "models": {}}, compressed, profile)
    assert "`detect_compress onnx_int8` (0.9" in lines[0] and "`detect_profile m` (0.9" in lines[0]
    assert "fp32" not in lines[0]
    quiet = contention_report_lines({**metrics, "models": {}}, None, None)
    assert quiet[0] == "Every timing was measured on a quiet machine (other processes and stolen CPU ≤ 0.25 cores)."
    assert contention_report_lines({"models": {}}, None, None) == []  # metrics older than the monitoring


def test_detection_load_params_are_validated() -> None:
    params = parse_settings(DetectionPipelineParams, {"detection": {"max_load": None}}).detection
    assert LoadPolicy.of(params) == LoadPolicy(None, 2, 30.0)
    with pytest.raises(EdgecompressError) as err:
        parse_settings(DetectionPipelineParams, {"detection": {"max_load": -1}})
    assert str(err.value).startswith("detection.max_load=-1 is invalid: must be null or cores > 0")
