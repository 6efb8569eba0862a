"""Project goals checked against measured values, recorded in the metrics files (never asserted by
timed tests): each is {"value", "goal", "met"} so a missed goal is reported with its number."""

from __future__ import annotations

from typing import Any


def target(value: float, *, at_most: float | None = None, at_least: float | None = None,
           goal: str) -> dict[str, Any]:
    """Check `value` against a bound and describe the goal in words."""
    met = (at_most is None or value <= at_most) and (at_least is None or value >= at_least)
    return {"value": round(value, 6), "goal": goal, "met": bool(met)}
