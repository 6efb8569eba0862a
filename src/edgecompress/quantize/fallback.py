"""Per-layer float fallback, backend-agnostic: rank the quantized layers by how much keeping each one
alone in float recovers (one-layer-float ablation), then keep the fewest of them in float that bring a
score within its budget.

The backend is passed in as `build(float_layers) -> predictor` and the judge as `score(predictor) ->
float` (higher is better: e.g. top-1 agreement with FP32, or accuracy, on data the evaluation never
sees), so FX, ONNX Runtime (`nodes_to_exclude`) and NNCF (ignored scope) share the search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


@dataclass
class Fallback:
    """What the search found: the layers kept in float (in the order they were added), the score with
    them, whether it reached `target`, and every trial (for the metrics)."""

    float_layers: list[str]
    score: float
    target: float
    met: bool
    baseline: float  # the score with every layer quantized
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # {"layer", "score"}, best first
    steps: list[dict[str, Any]] = field(default_factory=list)  # {"float_layers", "score"} per greedy step
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"float_layers": self.float_layers, "score": self.score, "target": self.target, "met": self.met,
                "baseline": self.baseline, "sensitivity": self.sensitivity[:10], "steps": self.steps,
                "seconds": round(self.seconds, 1)}


def float_fallback(build: Callable[[tuple[str, ...]], Any], score: Callable[[Any], float],
                   layers: Sequence[str], *, target: float, max_layers: int,
                   baseline: tuple[Any, float] | None = None) -> tuple[Fallback, Any]:
    """Fewest layers of `layers` kept in float so that `score(build(kept)) >= target`.

    Each layer is first scored alone in float (len(layers) builds); then the best-recovering layers are
    added one at a time (at most `max_layers` more builds) until the target is met. When it is not, the best
    set tried (no float layer included) is kept and rebuilt. Returns the search record and the predictor it
    describes (the last one built). `baseline`: the all-quantized
    predictor and its score when the caller has them already (else built and scored here).
    """
    start = time.perf_counter()
    if baseline is None:
        first = build(())
        baseline = (first, score(first))
    predictor, baseline_score = baseline
    if baseline_score >= target or max_layers == 0:
        return Fallback([], baseline_score, target, baseline_score >= target, baseline_score,
                        seconds=time.perf_counter() - start), predictor
    ranked = sorted(({"layer": name, "score": score(build((name,)))} for name in layers),
                    key=lambda row: -row["score"])
    kept: list[str] = []
    steps, current = [], baseline_score
    for row in ranked[:max_layers]:
        kept.append(row["layer"])
        predictor = build(tuple(kept))
        current = score(predictor)
        steps.append({"float_layers": list(kept), "score": current})
        log.info("float fallback: %d layer(s) in float (%s), score %.4f (target %.4f)", len(kept), row["layer"],
                 current, target)
        if current >= target:
            break
    if current < target:
        # a missed target keeps the best set tried, not the last: one-layer gains need not add up (yolov5n,
        # mAP@.5 on 16 images: all-INT8 0.550, then 1-4 float layers 0.556, 0.560, 0.555, 0.534)
        best = max([{"float_layers": [], "score": baseline_score}, *steps], key=lambda step: step["score"])
        if best["float_layers"] != kept:
            kept, current = list(best["float_layers"]), best["score"]
            predictor = build(tuple(kept))  # rebuilt: the artifact on disk is the last build's
            log.info("float fallback: target missed; keeping the best set tried, %d layer(s) in float (score %.4f)",
                     len(kept), current)
    return Fallback(kept, current, target, current >= target, baseline_score, ranked, steps,
                    time.perf_counter() - start), predictor


def within_budget(build: Callable[[tuple[str, ...]], Any], score: Callable[[Any], float],
                  layers: Callable[[], Sequence[str]], *, reference: float, budget: float | None, max_layers: int,
                  unit: float = 100.0, timer: Callable[[Any], float] | None = None) -> tuple[Any, dict[str, Any]]:
    """A quality gate: build with every layer quantized and, when `budget` is set, record its drop
    `unit * (reference - score)` (points); over budget, `float_fallback` over `layers()` rebuilds it
    with the fewest float layers that bring it back. Returns the last build and the record (empty when
    `budget` is None): drop, float layers, whether it is met, and the all-INT8 drop (and latency, with
    `timer`) the float layers replaced."""
    built = build(())
    if budget is None:
        return built, {}
    all_int8 = score(built)
    drop = round(unit * (reference - all_int8), 3)
    record: dict[str, Any] = {"budget_points": budget, "drop_points": drop, "float_layers": [], "met": drop <= budget}
    if record["met"]:
        return built, record
    before = {"drop_points": drop, **({"latency_ms": timer(built)} if timer else {})}
    candidates = list(layers())
    found, built = float_fallback(build, score, candidates, target=reference - budget / unit, max_layers=max_layers,
                                  baseline=(built, all_int8))
    record.update(drop_points=round(unit * (reference - found.score), 3), float_layers=found.float_layers,
                  met=found.met, candidates=len(candidates), search_seconds=round(found.seconds, 1), all_int8=before)
    if timer and found.float_layers:
        record["latency_ms"] = timer(built)
    return built, record
