"""quantize.fallback: the one-layer-float ranking and the greedy search, with a fake backend whose score
is known for every set of float layers."""

from __future__ import annotations

from edgecompress.quantize.fallback import float_fallback

GAIN = {"conv1": 0.05, "conv2": 0.01, "dw3": 0.08, "fc": 0.0}  # what keeping each layer float recovers


def _search(target: float, max_layers: int = 4):
    builds: list[tuple[str, ...]] = []

    def build(float_layers: tuple[str, ...]) -> tuple[str, ...]:
        builds.append(float_layers)
        return float_layers

    def score(float_layers: tuple[str, ...]) -> float:
        return round(0.85 + sum(GAIN[name] for name in float_layers), 4)

    found, last = float_fallback(build, score, list(GAIN), target=target, max_layers=max_layers)
    return found, last, builds


def test_adds_the_most_recovering_layers_first_and_stops_at_the_target():
    found, last, builds = _search(target=0.97)
    assert [row["layer"] for row in found.sensitivity] == ["dw3", "conv1", "conv2", "fc"]
    assert found.float_layers == ["dw3", "conv1"] and found.met and found.score == 0.98 and found.baseline == 0.85
    assert [step["float_layers"] for step in found.steps] == [["dw3"], ["dw3", "conv1"]]
    assert last == ("dw3", "conv1")  # the predictor returned is the one the record describes
    assert len(builds) == 1 + len(GAIN) + 2


def test_already_within_target_builds_once_and_keeps_every_layer_quantized():
    found, last, builds = _search(target=0.8)
    assert found.float_layers == [] and found.met and builds == [()] and last == ()


def test_unreachable_target_stops_at_max_layers_and_says_so():
    found, _, _ = _search(target=0.99, max_layers=2)
    assert found.float_layers == ["dw3", "conv1"] and not found.met and found.to_dict()["score"] == 0.98


def test_a_given_baseline_is_not_built_or_scored_again():
    builds: list[tuple[str, ...]] = []

    def build(float_layers: tuple[str, ...]) -> tuple[str, ...]:
        builds.append(float_layers)
        return float_layers

    found, _ = float_fallback(build, lambda layers: round(0.85 + sum(GAIN[n] for n in layers), 4), list(GAIN),
                              target=0.97, max_layers=4, baseline=((), 0.85))
    assert () not in builds and len(builds) == len(GAIN) + 2 and found.baseline == 0.85


def test_a_missed_target_keeps_the_best_set_tried_not_the_last():
    """One-layer gains need not add up: here each layer alone helps, together they hurt."""
    alone = {"a": 0.60, "b": 0.58, "c": 0.57}
    together = {("a",): 0.60, ("a", "b"): 0.61, ("a", "b", "c"): 0.50}
    builds: list[tuple[str, ...]] = []

    def build(float_layers: tuple[str, ...]) -> tuple[str, ...]:
        builds.append(float_layers)
        return float_layers

    def score(layers: tuple[str, ...]) -> float:
        return 0.55 if not layers else together.get(layers, alone.get(layers[0]))

    found, last = float_fallback(build, score, list(alone), target=0.9, max_layers=3)
    assert found.float_layers == ["a", "b"] and found.score == 0.61 and not found.met
    assert last == ("a", "b") and builds[-1] == ("a", "b")  # rebuilt, so the artifact on disk is this set
    assert [step["score"] for step in found.steps] == [0.60, 0.61, 0.50]  # every trial still recorded
    alone.update(a=0.54, b=0.53, c=0.52)  # no float layer helps: every set scores below all-INT8's 0.55
    together.clear()
    found, last = float_fallback(build, score, list(alone), target=0.9, max_layers=3)
    assert found.float_layers == [] and found.score == 0.55 and last == () and builds[-1] == ()
