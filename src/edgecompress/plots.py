"""Matplotlib figures written as PNG (atomically): training curves, confusion matrix, sample grid;
and the Pareto front every pipeline's trade-off plot marks.

dvclive writes the same curves as TSV for `dvc plots show/diff`; the PNGs are for people reading the
repo or a report without DVC.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers/CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from edgecompress.io import atomic_write  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path) -> None:
    """Save a figure as PNG atomically and close it."""
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def pareto_front(points: Mapping[str, tuple[float, float]], *, keep_ties: bool) -> list[str]:
    """Names on the Pareto front of name -> (cost, quality), ordered by cost: no other point has
    lower-or-equal cost and higher-or-equal quality with at least one strictly better.

    Args:
        keep_ties: points identical in both coordinates are all on the front (True: the detection
            report lists every variant that is not dominated), or only the first of them in
            `points`' order (False: the chain's Pareto plot labels one variant per position, and
            identical INT8 engines would stack their labels).
    """
    if keep_ties:
        front = [name for name, (c, q) in points.items()
                 if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q)
                            for other, (c2, q2) in points.items() if other != name)]
        return sorted(front, key=lambda n: points[n][0])
    front, best = [], -math.inf
    for name, (_, quality) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if quality > best:
            front.append(name)
            best = quality
    return front


def training_curves(history: Sequence[dict[str, float]], path: str | Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", ms=3, label=split)
        ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in history], marker="o", ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.set_yscale("log")  # early epochs can be 100x the final loss
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], path: str | Path, title: str) -> None:
    """Confusion matrix heat map with counts (rows: true class, columns: predicted)."""
    n = len(classes)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        threshold = confusion.max().item() / 2
        for i in range(n):
            for j in range(n):
                value = int(confusion[i, j])
                if value:
                    ax.text(j, i, value, ha="center", va="center", fontsize=7,
                            color="white" if value > threshold else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    save_figure(fig, path)


def sample_grid(images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, classes: Sequence[str],
                path: str | Path, title: str, columns: int = 8) -> None:
    """Grid of test images labelled 'true / predicted', wrong predictions in red.

    Args:
        images: uint8 (N, 3, H, W) as stored by the prepare stage (not normalised).
    """
    n = len(images)
    rows = max(1, (n + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= n:
            continue
        ax.imshow(images[idx].permute(1, 2, 0).numpy())
        true, pred = classes[int(targets[idx])], classes[int(preds[idx])]
        ax.set_title(f"{true} / {pred}", fontsize=7, color="black" if true == pred else "red")
    fig.suptitle(f"{title} (true / predicted)")
    save_figure(fig, path)
