"""Issue #15's detection targets, read from detect_compress's variant rows (no model is run here): the
best INT8 variant's mAP@.5 against the FP32 model's, and its model block against the fastest FP32 runtime's
at the stage's batch size. The model block is what compression changes; pre-processing, NMS and
post-processing are the same code for every variant, so whole-inference speed-ups are recorded beside it."""

from __future__ import annotations

from typing import Any, Mapping

from edgecompress.detection.pruning import FP32_RUNTIMES, fastest, model_ms

INT8_VARIANTS = ("onnx_int8", "openvino_int8")  # the unpruned network's INT8 (the pruned one has no mAP target)
MAP50_DROP_POINTS = 1.0  # the best INT8 variant: mAP@.5 within this many points of FP32 ...
SPEEDUP = 1.5  # ... and its model block this much faster than the fastest FP32 runtime's


def int8_summary(variants: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The "int8" block of detect_compress's metrics: each INT8 variant's mAP@.5 drop (points) and
    speed-up over the fastest FP32 runtime (model block; whole inference against the FP32 runtime fastest there);
    "best": the fastest INT8
    variant within the mAP budget, else the most accurate one (its misses are then reported), with
    whether each target is met. None when FP32 or no INT8 variant was measured."""
    reference, fp32 = fastest(variants, FP32_RUNTIMES), variants.get("fp32") or {}
    if reference is None or "map_50" not in fp32:
        return None
    # whole inference (the same pre-processing, NMS and post-processing around each model block) has its own
    # fastest FP32 runtime: ONNX Runtime's fastest model block can pay more around it than OpenVINO's
    inference_reference = min(((variants[name]["timing"]["inference_ms_per_image"], name) for name in FP32_RUNTIMES
                               if model_ms(variants.get(name)) is not None))
    rows = {}
    for name in INT8_VARIANTS:
        row = variants.get(name)
        ms = model_ms(row)
        if ms is None:
            continue
        inference = row["timing"]["inference_ms_per_image"]
        rows[name] = {"map_50_drop_points": round(100 * (fp32["map_50"] - row["map_50"]), 4), "model_ms": ms,
                      "speedup": round(reference[1] / ms, 4), "inference_ms": inference,
                      "inference_speedup": round(inference_reference[0] / inference, 4)}
    if not rows:
        return None
    accurate = [name for name, row in rows.items() if row["map_50_drop_points"] <= MAP50_DROP_POINTS]
    best = (min(accurate, key=lambda name: rows[name]["model_ms"]) if accurate
            else min(rows, key=lambda name: rows[name]["map_50_drop_points"]))
    return {"best_fp32": {"variant": reference[0], "model_ms": reference[1]},
            "best_fp32_inference": {"variant": inference_reference[1], "inference_ms": inference_reference[0]},
            "variants": rows, "best": best, "map_50_drop_budget": MAP50_DROP_POINTS, "speedup_goal": SPEEDUP,
            "map_50_met": rows[best]["map_50_drop_points"] <= MAP50_DROP_POINTS,
            "speedup_met": rows[best]["speedup"] >= SPEEDUP}
