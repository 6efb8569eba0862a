"""The ImageNet side of the zoo: the class-index mapping, an image-folder subset with each image's
class index in the 1000-class output space, its split into evaluation and calibration images, and
the images decoded and preprocessed with each model's own eval transform."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecompress import EdgecompressError
from edgecompress.io import read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_imagenet_classes(path: str | Path) -> list[tuple[str, str]]:
    """`classes.txt` lines `index wnid name` -> [(wnid, name)] indexed by class index (0..999).

    Raises:
        EdgecompressError: missing file, a malformed line, or indices that are not 0..N-1.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"{path}: ImageNet class list not found (expected lines 'index wnid name')")
    entries: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=2)
        if len(parts) < 2 or not parts[0].isdigit() or not parts[1].startswith("n"):
            raise EdgecompressError(f"{path}:{number}: {line!r} is not 'index wnid name'")
        entries[int(parts[0])] = (parts[1], parts[2] if len(parts) > 2 else parts[1])
    if sorted(entries) != list(range(len(entries))):
        raise EdgecompressError(f"{path}: class indices are not 0..{len(entries) - 1} without gaps")
    return [entries[i] for i in range(len(entries))]


def default_imagenet_classes() -> list[tuple[str, str]]:
    """The 1,000 ImageNet-1k classes as [(wnid, name)] in torchvision's index order (sorted WordNet
    ids), from the synset list that ships with timm (no file to download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [(info.index_to_label_name(i), info.index_to_description(i)) for i in range(info.num_classes())]


@dataclass(frozen=True)
class Subset:
    """Images of an ImageNet subset with their class indices in the 1000-class output space."""

    paths: tuple[Path, ...]
    targets: tuple[int, ...]
    num_classes_present: int


def imagenet_subset(root: str | Path, classes: list[tuple[str, str]], max_images: int | None = None) -> Subset:
    """Images under `root/<folder>/`, where each folder is a WordNet id (`n01440764`) or a class index
    (`0`..`999`); the folder name gives the image's ImageNet class index explicitly.

    Images are taken in sorted order, one per class first (round robin over classes), so a cap of N
    images covers min(N, classes) classes instead of the first few classes only.

    Raises:
        EdgecompressError: missing root, a folder name that is neither a known wnid nor an index, or
            no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgecompressError(f"{root}: ImageNet image folder not found (expected <root>/<wnid or index>/*.JPEG)")
    index_of = {wnid: i for i, (wnid, _) in enumerate(classes)}
    per_class: list[tuple[int, list[Path]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in index_of:
            target = index_of[folder.name]
        elif folder.name.isdigit() and int(folder.name) < len(classes):
            target = int(folder.name)
        else:
            raise EdgecompressError(f"{folder}: folder name is neither a WordNet id of the class list nor a "
                                    f"class index 0..{len(classes) - 1}")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            per_class.append((target, images))
    if not per_class:
        raise EdgecompressError(f"{root}: no images found (expected <root>/<wnid or index>/*.JPEG)")
    # round robin: every class's first image (in folder order), then every class's second, ...
    ranked = sorted((depth, order, target, path) for order, (target, images) in enumerate(per_class)
                    for depth, path in enumerate(images))[:max_images]
    targets = tuple(target for _, _, target, _ in ranked)
    return Subset(tuple(path for *_, path in ranked), targets, len(set(targets)))


def evaluation_and_calibration(subset: Subset, max_images: int, calibration_images: int = 0, gate_images: int = 0
                               ) -> tuple[Subset, tuple[Path, ...], tuple[Path, ...]]:
    """The first `max_images` images (one per class first) for evaluation, the next `calibration_images`
    for quantization calibration and the `gate_images` after those for the quality gate: neither
    calibration nor the gate ever sees an evaluated image.

    Returns:
        (evaluation subset, calibration paths, gate paths).
    Raises:
        EdgecompressError: fewer images left after the evaluation set than calibration and gate need.
    """
    count = min(max_images, len(subset.paths))
    left = len(subset.paths) - count
    if left < calibration_images + gate_images:
        wanted = (f"zoo.calibration_batches x zoo.calibration_batch_size = {calibration_images} calibration images"
                  + (f" and zoo.gate_images = {gate_images} gate images" if gate_images else ""))
        raise EdgecompressError(
            f"{wanted} are needed beyond the {count} evaluation images, but only {left} are left of "
            f"{len(subset.paths)}; lower zoo.max_images or add images")
    calibration = subset.paths[count:count + calibration_images]
    gate = subset.paths[count + calibration_images:count + calibration_images + gate_images]
    targets = subset.targets[:count]
    return Subset(subset.paths[:count], targets, len(set(targets))), calibration, gate


def load_images(paths: tuple[Path, ...] | list[Path], transform: Any) -> torch.Tensor:
    """Decode and preprocess images with a model's eval transform -> float tensor (N, C, H, W).

    Raises:
        EdgecompressError: naming an image file that cannot be read.
    """
    if not paths:
        return torch.empty(0)
    return torch.stack([transform(read_image(p)) for p in paths])


def describe_preprocessing(transform: Any) -> dict[str, Any]:
    """The eval transform's settings as plain values (for metrics: what each model was fed)."""
    return {"resize": list(transform.resize_size), "crop": list(transform.crop_size),
            "interpolation": transform.interpolation.value, "mean": list(transform.mean), "std": list(transform.std)}


class ImageCache:
    """Preprocessed images per distinct eval transform: most torchvision weights share one (resize 256,
    crop 224, bilinear, ImageNet mean/std), so JPEGs are decoded once per transform, not once per model."""

    def __init__(self) -> None:
        self._tensors: dict[tuple[str, tuple[Path, ...]], torch.Tensor] = {}

    def get(self, paths: tuple[Path, ...], transform: Any) -> torch.Tensor:
        key = (repr(describe_preprocessing(transform)), tuple(paths))
        if key not in self._tensors:
            self._tensors[key] = load_images(paths, transform)
        return self._tensors[key]
