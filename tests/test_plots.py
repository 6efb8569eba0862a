"""plots.pareto_front: the one Pareto rule of every report, with its two ways of treating exact ties."""

from edgecompress.plots import pareto_front

POINTS = {"a": (1.0, 90.0), "b": (2.0, 95.0), "c": (3.0, 94.0), "d": (0.5, 80.0), "e": (2.0, 93.0)}


def test_front_is_ordered_by_cost_and_drops_dominated_points():
    for keep_ties in (False, True):
        assert pareto_front(POINTS, keep_ties=keep_ties) == ["d", "a", "b"]


def test_identical_points_kept_once_or_all():
    twins = {**POINTS, "a2": (1.0, 90.0)}
    assert pareto_front(twins, keep_ties=False) == ["d", "a", "b"]  # the chain's plot: one label per position
    assert pareto_front(twins, keep_ties=True) == ["d", "a", "a2", "b"]  # detection's table: every variant
