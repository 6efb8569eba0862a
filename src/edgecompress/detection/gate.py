"""The INT8 quality gate of the detection pipeline (`detection.compress.max_map_drop`): an INT8 variant's
mAP@.5 is judged against the FP32 model's on training-split images (never the evaluated subset); over
budget, the fewest convolutions that bring it back stay float (`quantize.fallback.within_budget`, node
names of the ONNX / OpenVINO graph)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from edgecompress.detection.models import Detector
from edgecompress.quantize.fallback import within_budget


@dataclass(frozen=True)
class Gate:
    """What the gate judges with: `score(detector) -> mAP@.5` (fraction) on the gate images."""

    score: Callable[[Detector], float]
    max_map_drop: float
    max_float_layers: int
    images: int
    disjoint: bool = True  # no gate image calibrates INT8 (False: the training split had no other image)


def gated(build: Callable[[tuple[str, ...]], Detector], nodes: Callable[[], Sequence[str]], fp32: Detector,
          gate: Gate | None) -> tuple[Detector, dict[str, Any]]:
    """`build(())` without a gate; with one, through `within_budget` against `fp32`'s score. The record
    goes into the variant's metrics under "gate"."""
    if gate is None:
        return build(()), {}
    variant, record = within_budget(build, gate.score, nodes, reference=gate.score(fp32), budget=gate.max_map_drop,
                                    max_layers=gate.max_float_layers)
    overlap = "none of them calibrates INT8" if gate.disjoint else "calibration images: the split has no other"
    return variant, {"gate": {**record, "judged_on": f"{gate.images} training-split images (mAP@.5; {overlap})"}}
