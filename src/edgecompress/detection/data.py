"""The in-memory detection data set every format loads into (`DetectionDataset` of `ImageAnnotation`s),
and what the pipeline does with one: seeded subsets, the pool outside an evaluated subset, summaries
and torchmetrics targets.

Boxes are always xyxy in absolute pixels (float64) and labels a contiguous class index into
`DetectionDataset.classes`; `category_ids` keeps the COCO category id of each index (1..K when the
source has none), so COCO output and evaluation use the source's ids.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edgecompress import EdgecompressError

MAX_LISTED = 10  # items named in one error or warning line; the rest are counted


@dataclass
class ImageAnnotation:
    """One image and its boxes."""

    image_id: int  # COCO image id (or a running index from 1 for VOC/YOLO sources)
    file_name: str  # path relative to DetectionDataset.images_dir
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float64, xyxy in absolute pixels (x1 < x2, y1 < y2)
    labels: np.ndarray  # (N,) int64, contiguous class index into DetectionDataset.classes
    iscrowd: np.ndarray  # (N,) bool (COCO crowd regions, VOC difficult objects; False elsewhere)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if not len(self.boxes) == len(self.labels) == len(self.iscrowd):
            raise ValueError(f"{self.file_name}: {len(self.boxes)} boxes, {len(self.labels)} labels and "
                             f"{len(self.iscrowd)} iscrowd flags must have the same length")

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)


@dataclass
class DetectionDataset:
    """Images with their boxes, class names and the COCO category id of each class index."""

    images_dir: Path
    classes: list[str]  # class index -> name
    images: list[ImageAnnotation]
    category_ids: list[int]  # COCO category id of each class index (1..K when the source has none)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_boxes(self) -> int:
        return sum(image.num_boxes for image in self.images)

    def image_path(self, index: int) -> Path:
        """Path of the image at position `index`."""
        return Path(self.images_dir) / self.images[index].file_name


def first_items(items: Sequence[Any]) -> str:
    """The first MAX_LISTED items, comma-separated, plus how many more: keeps a message on one line."""
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(str(item) for item in items[:MAX_LISTED]) + more


def check_images_exist(ds: DetectionDataset, listed_by: str | Path) -> None:
    """Raise one line naming every image of `ds` (first MAX_LISTED) that is not a file under
    `images_dir`, and `listed_by` (what lists them), before anything opens or copies one."""
    missing = [image.file_name for image in ds.images if not (Path(ds.images_dir) / image.file_name).is_file()]
    if missing:
        raise EdgecompressError(f"{listed_by}: {len(missing)} listed image(s) not found under {ds.images_dir}: "
                                f"{first_items(missing)}")


def subset(ds: DetectionDataset, n: int | None, seed: int) -> DetectionDataset:
    """`n` images drawn with `random.Random(seed)`, in their original order; n=None keeps all."""
    if n is None:
        return DetectionDataset(ds.images_dir, list(ds.classes), list(ds.images), list(ds.category_ids))
    if not 0 <= n <= len(ds.images):
        raise EdgecompressError(f"subset size {n} is not possible: the data set has {len(ds.images)} images "
                                f"(expected 0..{len(ds.images)} or null for all)")
    chosen = sorted(random.Random(seed).sample(range(len(ds.images)), n))
    return DetectionDataset(ds.images_dir, list(ds.classes), [ds.images[i] for i in chosen], list(ds.category_ids))


def outside(ds: DetectionDataset, evaluated: DetectionDataset) -> DetectionDataset:
    """The images of `ds` that are not in `evaluated` (by file name): the pool for training and INT8
    calibration, so neither ever sees an evaluated image."""
    used = {image.file_name for image in evaluated.images}
    return replace(ds, images=[image for image in ds.images if image.file_name not in used])


def summary(ds: DetectionDataset) -> dict[str, Any]:
    """Counts for the metrics JSON; `boxes` and `boxes_per_class` include crowd boxes, and
    `boxes_per_class` lists every class (zeros too) so keys are stable across runs."""
    per_class: Counter[int] = Counter()
    for image in ds.images:
        per_class.update(image.labels.tolist())
    return {
        "images": len(ds.images),
        "boxes": ds.num_boxes,
        "crowd_boxes": int(sum(int(image.iscrowd.sum()) for image in ds.images)),
        "images_without_boxes": sum(1 for image in ds.images if image.num_boxes == 0),
        "classes": len(ds.classes),
        "classes_present": len(per_class),
        "boxes_per_class": {name: per_class.get(index, 0) for index, name in enumerate(ds.classes)},
    }


def to_targets(ds: DetectionDataset) -> list[dict[str, torch.Tensor]]:
    """Per image `{"boxes": float32 (N, 4), "labels": int64 (N,), "iscrowd": int64 (N,)}`, the target
    format of torchmetrics' MeanAveragePrecision (which ignores crowd boxes like COCO)."""
    return [{"boxes": torch.from_numpy(image.boxes).float(),
             "labels": torch.from_numpy(image.labels).long(),
             "iscrowd": torch.from_numpy(image.iscrowd).long()} for image in ds.images]
