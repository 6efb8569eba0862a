"""The detection pipeline's data on disk: the source data set a `detection.data` params block
describes (any of the three formats), the evaluation subset and training split cut from it, and the
self-contained folder each is written to once (`detection_data`) and read from by every later stage."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from edgecompress import EdgecompressError
from edgecompress.detection.data import DetectionDataset, check_images_exist, outside, subset
from edgecompress.detection.formats import (load_coco, load_voc, load_yolo, read_class_names, write_class_names,
                                            write_coco, write_voc, write_yolo)
from edgecompress.detection.params import FORMATS
from edgecompress.io import atomic_dir

PARAMS_KEY = "detection.data"  # prefix of the params keys named in load_dataset's errors
SUBSET_ANNOTATIONS, SUBSET_IMAGES = "annotations.json", "images"


def _resolve(root: Path, relative: str | Path | None, key: str, expected: str, *, folder: bool) -> Path:
    """`root / relative`, checked to exist, with a one-line error naming the params key."""
    if relative is None:
        raise EdgecompressError(f"{PARAMS_KEY}.{key} is not set: expected {expected}")
    path = root / relative
    if not (path.is_dir() if folder else path.is_file()):
        raise EdgecompressError(f"{PARAMS_KEY}.{key}={relative} not found at {path}: expected {expected}")
    return path


def load_dataset(fmt: str, *, root: str | Path, annotations: str | Path | None = None,
                 images: str | Path | None = None, labels: str | Path | None = None,
                 classes: str | Path | Sequence[str] | None = None) -> DetectionDataset:
    """Load a detection data set; every path is relative to `root` (an absolute one is used as is).

    Args:
        fmt: "coco", "voc" or "yolo".
        root: the data set's folder.
        annotations: COCO: the instances json (required); VOC: the XML folder (default "Annotations").
        images: the image folder (default "images"; VOC "JPEGImages").
        labels: YOLO: the txt folder (default "labels").
        classes: a data.yaml / names.txt path or a list of names. YOLO: required; VOC: None = the
            names found; COCO: optional check that the json's class names are exactly these.
    """
    if fmt not in FORMATS:
        raise EdgecompressError(f"{PARAMS_KEY}.format={fmt!r} is not supported: allowed {', '.join(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise EdgecompressError(f"{PARAMS_KEY}.root={root} not found: expected the {fmt} data set folder")
    names: list[str] | None = None
    if isinstance(classes, (str, Path)):
        names = read_class_names(_resolve(root, classes, "classes", "a YOLO data.yaml or a names.txt", folder=False))
    elif classes is not None:
        names = list(classes)

    if fmt == "coco":
        ds = load_coco(_resolve(root, annotations, "annotations", "a COCO instances_*.json", folder=False),
                       _resolve(root, images or "images", "images", "the COCO image folder", folder=True))
        if names is not None and names != ds.classes:
            raise EdgecompressError(f"{PARAMS_KEY}.classes={classes} lists {len(names)} names that differ from the "
                                    f"{len(ds.classes)} categories of {annotations}: expected the same names in "
                                    "category-id order, or null")
        return ds
    if fmt == "voc":
        return load_voc(_resolve(root, annotations or "Annotations", "annotations", "a folder of VOC XML files",
                                 folder=True),
                        _resolve(root, images or "JPEGImages", "images", "the VOC image folder", folder=True), names)
    if names is None:
        raise EdgecompressError(f"{PARAMS_KEY}.classes is not set: format yolo needs a data.yaml or names.txt")
    return load_yolo(_resolve(root, labels or "labels", "labels", "a folder of YOLO txt labels", folder=True),
                     _resolve(root, images or "images", "images", "the YOLO image folder", folder=True), names)



def load_source(spec: Any) -> DetectionDataset:
    """The source data set a `detection.data` params block (format, root, annotations, images,
    labels, classes) describes."""
    return load_dataset(spec.format, root=spec.root, annotations=spec.annotations, images=spec.images,
                        labels=spec.labels, classes=spec.classes)


def split_source(source: DetectionDataset, *, subset_images: int | None, train_images: int | None,
                 seed: int) -> tuple[DetectionDataset, DetectionDataset]:
    """The evaluation subset (`subset_images` drawn with `seed`) and the training split
    (`train_images` of the other source images, never an evaluated one; None = all of either).

    Raises:
        EdgecompressError: more training images asked for than lie outside the subset.
    """
    evaluated = subset(source, subset_images, seed)
    pool = outside(source, evaluated)
    if train_images is not None and train_images > len(pool.images):
        raise EdgecompressError(f"detection.train_images={train_images}: only {len(pool.images)} source images "
                                "lie outside the evaluation subset (null = all of them)")
    return evaluated, subset(pool, train_images, seed)


def write_subset(ds: DetectionDataset, out_dir: str | Path) -> None:
    """`ds` as a self-contained folder, replaced as a whole (`io.atomic_dir`): its images copied to
    `images/`, the boxes as COCO `annotations.json`, YOLO `labels/`, VOC `voc/` and `classes.txt`.
    Every image is checked to exist first, so a missing one is named (all of them) before anything is written."""
    check_images_exist(ds, f"the data set to write to {out_dir}")
    with atomic_dir(out_dir) as tmp:
        for image in ds.images:
            target = tmp / SUBSET_IMAGES / image.file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(ds.images_dir) / image.file_name, target)
        copied = replace(ds, images_dir=Path(out_dir) / SUBSET_IMAGES)
        write_coco(copied, tmp / SUBSET_ANNOTATIONS)
        write_yolo(copied, tmp / "labels")
        write_voc(copied, tmp / "voc")
        write_class_names(copied, tmp / "classes.txt")


def load_subset(directory: str | Path) -> DetectionDataset:
    """The subset `write_subset` wrote (its COCO annotations and copied images)."""
    directory = Path(directory)
    return load_coco(directory / SUBSET_ANNOTATIONS, directory / SUBSET_IMAGES)
