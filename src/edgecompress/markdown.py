"""Markdown for the REPORTs of every pipeline: one table format, one cell format, one link rule, and
the number formats the reports share (None stays None: a table shows it as an em dash)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence


def cell(value: Any) -> str:
    """A table cell: None/NaN as an em dash, booleans as yes/no, lists joined, pipes escaped."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items()) or "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines (and a blank line after) with cells formatted by `cell`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def relative_link(path: str | Path, start: str | Path) -> str:
    """`path` as a link from a document in folder `start` (POSIX separators)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def percent(fraction: float | None, digits: int = 2, sign: str = "") -> str | None:
    """A fraction in [0, 1] as a percentage ("85.00"; `sign`="%" appends it)."""
    return None if fraction is None else f"{100 * fraction:.{digits}f}{sign}"


def signed_points(delta: float) -> str:
    """A difference in percentage points with its sign ("+0.40", "-1.25"; never "-0.00")."""
    delta = round(delta, 2)
    return f"{0.0 if delta == 0 else delta:+.2f}"


def times(value: float | None, digits: int = 2) -> str | None:
    """A ratio as "1.52×"."""
    return None if value is None else f"{value:.{digits}f}×"


def thousands(value: Any) -> str | None:
    """An integer with thousands separators ("41,293")."""
    return None if value is None else f"{int(value):,}"
