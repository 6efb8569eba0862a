"""zoo.speedups: the fastest FP32 runtime, the best INT8 variant and the INT8 targets, from metrics only."""

from edgecompress.zoo import speedups


def lat(b1: float | None, b8: float) -> dict:
    out = {"8": {"median": b8}}
    if b1 is not None:
        out["1"] = {"median": b1}
    return {"latency_ms": out}


MODEL = {
    "fp32": lat(8.0, 5.0),
    "runtimes": {
        "compiled": lat(6.0, 4.0),
        "onnx_fp32": lat(2.0, 2.2),
        "openvino_fp32": lat(1.0, 1.1),
        "onnx_int8": {"top1": 0.84, "top1_agreement": 0.97, **lat(0.9, 0.9)},
        "openvino_int8": {"top1": 0.80, "top1_agreement": 0.90, **lat(0.5, 0.5)},  # fast but inaccurate
        "broken": {"skipped": "conversion failed"},
    },
    "static": {"x86": {"top1": 0.845, "top1_agreement": 0.96, **lat(None, 1.5)}},
}


def test_fastest_fp32_runtime_per_batch_size():
    assert speedups.best_fp32(MODEL, 8) == ("openvino_fp32", 1.1)
    assert speedups.best_fp32(MODEL, "1") == ("openvino_fp32", 1.0)
    assert speedups.best_fp32({"fp32": lat(8.0, 5.0)}, 8) == ("eager", 5.0)


def test_best_int8_is_the_fastest_within_the_accuracy_targets():
    assert speedups.best_int8(MODEL, fp32_top1=0.85, batch=8) == "onnx_int8"  # openvino_int8 drops 5 points
    assert set(speedups.candidates(MODEL)) == {"eager", "compiled", "onnx_fp32", "openvino_fp32", "onnx_int8",
                                               "openvino_int8", "fx_x86"}  # skipped variants are left out
    none_accurate = {**MODEL, "runtimes": {"openvino_int8": MODEL["runtimes"]["openvino_int8"]}, "static": {}}
    assert speedups.best_int8(none_accurate, fp32_top1=0.85, batch=8) == "openvino_int8"  # reported, misses shown


def test_goals_judge_the_best_int8_against_the_fastest_fp32():
    goals = speedups.int8_goals("m", 0.85, MODEL, [1, 8])
    drop, agreement, b8, b1 = goals.values()
    assert drop["met"] and abs(drop["value"] - 1.0) < 1e-6 and drop["unit"] == "points"
    assert agreement["met"] and agreement["value"] == 97.0
    assert "fastest FP32 (openvino_fp32) at batch 8" in list(goals)[2]
    assert not b8["met"] and abs(b8["value"] - 1.1 / 0.9) < 1e-6  # 1.22x: under the 1.5x target
    assert b1["met"] is False and abs(b1["value"] - 1.0 / 0.9) < 1e-6
