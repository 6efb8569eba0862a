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
                   layers: Sequence[str], *, target: float, max_layers: int) -> tuple[Fallback, Any]:
    """Fewest layers of `layers` kept in float so that `score(build(kept)) >= target`.

    Each layer is first scored alone in float (len(layers) builds); then the best-recovering layers are
    added one at a time (at most `max_layers` more builds) until the target is met. Returns the search
    record and the last predictor built (the one it describes).
    """
    start = time.perf_counter()
    predictor = build(())
    baseline = score(predictor)
    if baseline >= target or max_layers == 0:
        return Fallback([], baseline, target, baseline >= target, baseline, seconds=time.perf_counter() - start), \
            predictor
    ranked = sorted(({"layer": name, "score": score(build((name,)))} for name in layers),
                    key=lambda row: -row["score"])
    kept: list[str] = []
    steps, current = [], baseline
    for row in ranked[:max_layers]:
        kept.append(row["layer"])
        predictor = build(tuple(kept))
        current = score(predictor)
        steps.append({"float_layers": list(kept), "score": current})
        log.info("float fallback: %d layer(s) in float (%s), score %.4f (target %.4f)", len(kept), row["layer"],
                 current, target)
        if current >= target:
            break
    return Fallback(kept, current, target, current >= target, baseline, ranked, steps,
                    time.perf_counter() - start), predictor
