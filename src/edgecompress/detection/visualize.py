"""Detections drawn on their images: ground-truth boxes (green, dashed) and predictions (a colour per
class, with scores), one PNG per image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers/CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edgecompress import EdgecompressError  # noqa: E402
from edgecompress.config import check  # noqa: E402
from edgecompress.detection.data import DetectionDataset, ImageAnnotation  # noqa: E402
from edgecompress.detection.metrics import Prediction, check_lengths, prediction_arrays, target_arrays  # noqa: E402
from edgecompress.io import read_image  # noqa: E402
from edgecompress.plots import save_figure  # noqa: E402

GT_COLOUR = "#2ca02c"
# tab10 without its green, so a prediction never looks like ground truth.
PRED_COLOURS = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def draw_detections(image_path: str | Path, gt: ImageAnnotation, pred: Prediction, classes: Sequence[str],
                    out_path: str | Path, *, title: str | None = None) -> None:
    """Write a PNG of the image with ground-truth boxes (green, dashed, class name) and predictions
    (one colour per class, "name score").

    Raises:
        EdgecompressError: naming the image when it is missing or not a readable image (no output is
            written then).
    """
    image_path = Path(image_path)
    if not image_path.is_file():
        raise EdgecompressError(f"detection image {image_path} not found: expected the file listed in the "
                                "data set's annotations")
    pixels = np.asarray(read_image(image_path))
    height, width = pixels.shape[:2]
    fig_width = min(8.0, max(4.0, width / 100))
    fig, ax = plt.subplots(figsize=(fig_width, fig_width * height / width), dpi=100)
    try:
        ax.imshow(pixels)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")
        gt_boxes, gt_labels, _ = target_arrays(gt)
        for (x1, y1, x2, y2), label in zip(gt_boxes.tolist(), gt_labels.tolist()):
            # Above the predictions: a good detection hides its ground-truth box otherwise.
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=GT_COLOUR,
                                       linestyle="--", linewidth=1.5, zorder=3))
            ax.text(x1, y1, _class_name(classes, label), color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": GT_COLOUR, "alpha": 0.7, "pad": 1, "edgecolor": "none"})
        boxes, scores, labels = prediction_arrays(pred)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            colour = PRED_COLOURS[label % len(PRED_COLOURS)]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
            # Below the box: a prediction on top of its ground truth keeps both labels readable.
            ax.text(x1, y2, f"{_class_name(classes, label)} {score:.2f}", color="white", fontsize=6, va="top",
                    bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "edgecolor": "none"})
        ax.set_title(title if title is not None else
                     f"{image_path.name}: {len(gt_labels)} ground truth (green, dashed), {len(labels)} predicted",
                     fontsize=7)
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, out_path)


def _class_name(classes: Sequence[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else f"class {label}"


def write_visualizations(ds: DetectionDataset, preds: Sequence[Prediction], out_dir: str | Path,
                         classes: Sequence[str], *, max_images: int) -> list[Path]:
    """Draw the first `max_images` images of `ds` with their predictions as `<out_dir>/<stem>.png`
    (the image id is appended when two images share a stem).

    Returns:
        The PNG paths written, in data set order.
    """
    check_lengths(preds, ds.images)
    check(isinstance(max_images, int) and not isinstance(max_images, bool) and max_images >= 0,
          "visualization max_images", max_images, "must be an integer >= 0")
    out_dir = Path(out_dir)
    written: list[Path] = []
    used_stems: set[str] = set()
    for image, pred in zip(ds.images[:max_images], preds):
        stem = Path(image.file_name).stem
        if stem in used_stems:
            stem = f"{stem}_{image.image_id}"
        used_stems.add(stem)
        out_path = out_dir / f"{stem}.png"
        draw_detections(Path(ds.images_dir) / image.file_name, image, pred, classes, out_path)
        written.append(out_path)
    return written
