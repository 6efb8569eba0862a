"""Data sets: the `prepare` stage's cached uint8 splits and the loaders the training stages read.

`prepare_dataset` loads a registered data set (`DATASETS`), takes a seeded stratified split and writes
`train.pt`, `val.pt`, `test.pt` (`{"images": uint8 N x 3 x H x W, "labels": int64 N}`) and `meta.json`
(classes, per-channel mean/std of the train split, split sizes and class counts). Caching uint8 keeps
the files 4x smaller than float and lets augmentation run on the original pixel values.

`make_loader` reads a split back; images become float in [0, 1], are augmented (train only) and
normalised with `normalize_transform(meta)`, which other stages reuse so that calibration and export
preprocess exactly as training did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgecompress import EdgecompressError
from edgecompress.config import ParamError, Settings, build, check, check_choice
from edgecompress.datasets import DATASETS, dataset_names
from edgecompress.io import load_torch, read_json, save_torch, write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataParams(Settings):
    """The `data` block: which data set, where, and how it is split (stage prepare)."""

    name: str = "digits"  # digits | cifar10 | cifar100 | imagefolder
    root: str | None = None  # data set location for cifar10/cifar100/imagefolder
    image_size: int = 32  # pixels, square
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_samples: int | None = None  # stratified cap on images (None = all)
    seed: int = 0

    def validate(self) -> None:
        check_choice(self.name, "name", dataset_names())
        check(self.name == "digits" or bool(self.root), "root", self.root, f"data set '{self.name}' needs a local path")
        check(self.image_size >= 8, "image_size", self.image_size, "must be an integer >= 8")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            check(0 < value < 1, key, value, "must be a number in (0, 1)")
        check(self.val_fraction + self.test_fraction < 1, "test_fraction", self.test_fraction,
              "val_fraction + test_fraction must be < 1")
        check(self.max_samples is None or self.max_samples >= 1, "max_samples", self.max_samples,
              "must be null or an integer >= 1")


@dataclass(frozen=True)
class AugmentParams(Settings):
    """`train.augment`: per-sample augmentation of the training split (`make_loader`), 0 = off."""

    hflip: bool = False  # off for digits: a mirrored digit is another glyph
    crop_padding: int = 4  # pixels of padding for random crop, 0 = off
    color_jitter: float = 0.2  # brightness/contrast/saturation strength, 0 = off
    rotation: float = 15.0  # degrees, 0 = off
    random_erasing: float = 0.0  # probability of erasing a random rectangle (Zhong et al.), 0 = off

    def validate(self) -> None:
        check(0 <= self.random_erasing <= 1, "random_erasing", self.random_erasing, "must be a probability in [0, 1]")
        check(self.crop_padding >= 0, "crop_padding", self.crop_padding, "must be an integer >= 0")
        check(0 <= self.color_jitter <= 1, "color_jitter", self.color_jitter, "must be a number in [0, 1]")
        check(0 <= self.rotation <= 180, "rotation", self.rotation, "must be degrees in [0, 180]")


AUGMENT_OFF = {"hflip": False, "crop_padding": 0, "color_jitter": 0.0, "rotation": 0.0, "random_erasing": 0.0}


def _split_off(idx: np.ndarray, labels: np.ndarray, size: float | int, seed: int, classes: list[str],
               what: str, *, part_needs_all: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split of `idx` into (rest, part of `size`).

    Every class present in `idx` must land in `rest` (and in `part` unless part_needs_all=False, as
    for the discarded remainder of a max_samples subset); otherwise the class is named in the error.
    """
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels[idx], minlength=len(classes))
    try:
        rest, part = train_test_split(idx, test_size=size, stratify=labels[idx], random_state=seed)
    except ValueError as exc:  # sklearn: a class with 1 member, or fewer split slots than classes
        c = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        raise EdgecompressError(f"class '{classes[c]}' has {counts[c]} image(s): too few for {what} "
                                f"({exc}); add images or change the fractions") from None
    for c in np.flatnonzero(counts):
        if not (labels[rest] == c).any() or (part_needs_all and not (labels[part] == c).any()):
            raise EdgecompressError(
                f"class '{classes[c]}' has {counts[c]} image(s): too few for {what} to give every split "
                "at least one; add images, lower the fractions or raise data.max_samples")
    return rest, part


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 images scaled to [0, 1] (float64 sums, chunked)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)  # floor: constant channels
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def prepare_dataset(*, name: str, root: str | None, image_size: int, val_fraction: float,
                    test_fraction: float, max_samples: int | None, seed: int, out_dir: str | Path,
                    resize_size: int | None = None, mean_std: tuple[Any, Any] | None = None,
                    preprocessing_source: str = "data set") -> dict:
    """Load a data set, split it (stratified, seeded) and cache it as uint8 tensors in `out_dir`.

    Carved splits take `test_fraction`, then `val_fraction` (both of the whole pool). With a predefined
    test split (CIFAR, imagefolder train/test) `test_fraction` is unused and val is carved from the
    train pool with `val_fraction` unless a val split exists. Pretrained weights bring their own
    preprocessing (`init_weights.weights_preprocessing`): images are resized to `resize_size` before the
    centre `image_size` crop, and `mean_std` replaces the train split's statistics; `preprocessing_source`
    says where it came from in meta.json. `max_samples` subsamples (stratified)
    the whole pool, or the train pool when splits are predefined. Everything is loaded and checked
    before any file is written, and each file is written atomically (meta.json last).

    Returns:
        The meta dict written to `out_dir/meta.json`.
    Raises:
        EdgecompressError: bad parameters, missing/unreadable data, or a class too small to split.
    """
    try:  # the same checks as params.yaml's `data` block, for direct callers
        DataParams(name=name, root=root, image_size=image_size, val_fraction=val_fraction,
                   test_fraction=test_fraction, max_samples=max_samples, seed=seed)
    except ParamError as exc:
        raise exc.prefixed("data") from None
    raw = DATASETS[name](root, image_size, resize_size)
    classes, rng = raw.classes, np.random.default_rng(seed)
    carved = "all" in raw.pools
    pool_images, pool_labels = raw.pools["all" if carved else "train"]
    y = pool_labels.numpy()
    idx = np.arange(len(y))
    if max_samples is not None and max_samples < len(y):
        present = int((np.bincount(y, minlength=len(classes)) > 0).sum())
        if max_samples < present:
            raise ParamError("data.max_samples", max_samples, f"must be at least the number of classes "
                             f"({present}) so that every class is kept")
        idx, _ = _split_off(idx, y, len(y) - max_samples, seed, classes,
                            f"data.max_samples={max_samples}", part_needs_all=False)
    chosen: dict[str, np.ndarray] = {}
    if carved:
        rest, chosen["test"] = _split_off(idx, y, test_fraction, seed, classes, "the test split")
        chosen["train"], chosen["val"] = _split_off(rest, y, val_fraction / (1 - test_fraction), seed,
                                                    classes, "the val split")
    elif "val" in raw.pools:
        chosen["train"] = rng.permutation(idx)
    else:
        chosen["train"], chosen["val"] = _split_off(idx, y, val_fraction, seed, classes, "the val split")
    splits = {s: (pool_images[torch.from_numpy(i)], pool_labels[torch.from_numpy(i)])
              for s, i in chosen.items()}
    for s in SPLITS:  # predefined splits: shuffle once so "first N" (calibration) mixes classes
        if s not in splits:
            images, labels = raw.pools[s]
            perm = torch.from_numpy(rng.permutation(len(labels)))
            splits[s] = (images[perm], labels[perm])
    counts = {s: torch.bincount(splits[s][1], minlength=len(classes)).tolist() for s in SPLITS}
    for s in SPLITS:
        missing = [classes[c] for c, n in enumerate(counts[s]) if n == 0]
        if missing:
            logger.warning("%s split has no images of class(es) %s", s, missing[:10])
    mean, std = _channel_stats(splits["train"][0]) if mean_std is None else ([float(v) for v in mean_std[0]],
                                                                               [float(v) for v in mean_std[1]])
    meta = {
        "name": name, "root": None if root is None else str(root), "num_classes": len(classes),
        "classes": classes, "image_size": image_size, "mean": mean, "std": std,
        "preprocessing": {"source": preprocessing_source, "resize_size": resize_size or image_size,
                          "crop_size": image_size, "mean_std": "train split" if mean_std is None else preprocessing_source},
        "splits": {s: int(len(splits[s][1])) for s in SPLITS}, "class_counts": counts, "seed": seed,
        "split_source": "carved" if carved else "predefined", "max_samples": max_samples,
    }
    out_dir = Path(out_dir)
    for s in SPLITS:
        images, labels = splits[s]
        save_torch(out_dir / f"{s}.pt", {"images": images.contiguous(), "labels": labels.contiguous()})
    write_json(out_dir / "meta.json", meta)
    logger.info("prepared %s: %s, %d classes, %dx%d -> %s", name, meta["splits"], len(classes),
                image_size, image_size, out_dir)
    return meta


def load_meta(prepared_dir: str | Path) -> dict:
    """Read `meta.json` written by `prepare_dataset`, checking the keys other stages rely on."""
    path = Path(prepared_dir) / "meta.json"
    meta = read_json(path)
    required = ("num_classes", "classes", "image_size", "mean", "std", "splits")
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise EdgecompressError(f"{path}: missing key(s) {missing}; re-run the prepare stage")
    return meta


def load_split(prepared_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one cached split: (uint8 N x 3 x H x W images, int64 N labels)."""
    check_choice(split, "split", SPLITS)
    path = Path(prepared_dir) / f"{split}.pt"
    data = load_torch(path, what=f"{split} split")
    images = data.get("images") if isinstance(data, dict) else None
    labels = data.get("labels") if isinstance(data, dict) else None
    if (not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor)
            or images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],)):
        raise EdgecompressError(f"{path}: expected {{'images': uint8 N x 3 x H x W, 'labels': N}}; "
                                "re-run the prepare stage")
    return images, labels.long()


def normalize_transform(meta: dict):
    """The eval-time normalisation: a v2.Normalize with the train split's mean/std, for float [0, 1]
    CHW (or NCHW) input. Reuse it wherever images are fed to a model outside `make_loader`."""
    from torchvision.transforms import v2

    return v2.Normalize(mean=[float(v) for v in meta["mean"]], std=[float(v) for v in meta["std"]])


def _build_augment(augment: dict | None, image_size: tuple[int, int]):
    """v2 pipeline on uint8 CHW tensors from the `augment` dict (`AugmentParams` keys, validated as in
    params.yaml); None when nothing is enabled."""
    from torchvision.transforms import v2

    try:  # a key left out is off (not AugmentParams' default)
        settings = build(AugmentParams, {**AUGMENT_OFF, **(augment or {})})
    except ParamError as exc:
        raise exc.prefixed("train.augment") from None
    augment = settings.to_dict()
    ops = []
    if augment.get("crop_padding"):
        ops.append(v2.RandomCrop(image_size, padding=int(augment["crop_padding"])))
    if augment.get("hflip"):
        ops.append(v2.RandomHorizontalFlip())
    if augment.get("rotation"):
        ops.append(v2.RandomRotation(float(augment["rotation"])))
    if augment.get("color_jitter"):
        c = float(augment["color_jitter"])
        ops.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c))
    if augment.get("random_erasing"):
        # Last, as in Zhong et al. 2020: the erased rectangle (value 0) is not moved or recoloured.
        ops.append(v2.RandomErasing(p=float(augment["random_erasing"])))
    return v2.Compose(ops) if ops else None


class _SplitDataset(Dataset):
    """uint8 images -> (optional augmentation) -> float [0, 1] -> Normalize, one sample at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: Any, normalize: Any) -> None:
        self.images, self.labels, self.augment, self.normalize = images, labels, augment, normalize

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.augment is not None:  # random draws come from torch's global RNG (see make_loader)
            image = self.augment(image)
        return self.normalize(image.float().div_(255.0)), self.labels[i]


def make_loader(prepared_dir: str | Path, split: str, *, batch_size: int, train: bool, seed: int,
                augment: dict | None = None, num_workers: int = 0,
                max_samples: int | None = None) -> DataLoader:
    """DataLoader over a cached split yielding (normalised float N x 3 x H x W, int64 N).

    With `train=True` the order is shuffled by a `torch.Generator` seeded with `seed` (two loaders with
    the same seed give the same order) and `augment` ({hflip, crop_padding, color_jitter, rotation,
    random_erasing}) is applied per sample, random erasing last. With num_workers=0 augmentation draws
    from torch's global RNG, so the caller seeds it (torch.manual_seed) for reproducible batches; with
    workers, their seeds derive from the loader's generator. With `train=False` there is no shuffle
    and no augmentation. `max_samples` keeps the first N images of the split.
    """
    check(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1, "batch_size",
          batch_size, "must be an integer >= 1")
    meta = load_meta(prepared_dir)
    images, labels = load_split(prepared_dir, split)
    if max_samples is not None:
        check(isinstance(max_samples, int) and not isinstance(max_samples, bool) and max_samples >= 1,
              "max_samples", max_samples, "must be null or an integer >= 1")
        images, labels = images[:max_samples], labels[:max_samples]
    transform = _build_augment(augment, tuple(images.shape[-2:])) if train else None
    dataset = _SplitDataset(images, labels, transform, normalize_transform(meta))
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator,
                      num_workers=num_workers, drop_last=False)
