"""Markdown for the REPORTs of every pipeline: one table format, one cell format, one link rule."""

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
