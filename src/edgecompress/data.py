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
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from edgecompress import EdgecompressError
from edgecompress.io import load_torch, read_json, save_torch, write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
AUGMENT_KEYS = ("hflip", "crop_padding", "color_jitter", "rotation", "random_erasing")
_CIFAR = {  # name -> (folder, train files, test file, meta file, label key, class-name key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}
_CIFAR_LAYOUT = {
    "cifar10": "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "<root>/cifar-100-python/{train,test,meta}",
}


@dataclass
class RawData:
    """A loaded data set before splitting: pool "all" (split is carved) or "train"/"test"[/"val"]."""

    classes: list[str]
    pools: dict[str, tuple[torch.Tensor, torch.Tensor]]  # pool -> (uint8 N x 3 x S x S, int64 N)


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Bilinear resize of a uint8 N x 3 x H x W batch to size x size, in chunks to bound memory."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = F.interpolate(images[start:start + chunk].float(), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_digits(root: str | None, image_size: int) -> RawData:
    """sklearn's 1,797 8x8 handwritten digits (shipped with scikit-learn, no download); root ignored."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0))).to(torch.uint8)
    images = _resize_uint8(pixels.unsqueeze(1).repeat(1, 3, 1, 1).contiguous(), image_size)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return RawData([str(n) for n in digits.target_names], {"all": (images, labels)})


def _read_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            # The official python-version files are pickles; encoding="bytes" as in the CIFAR docs.
            data = pickle.load(handle, encoding="bytes")
    except Exception as exc:  # corrupt/truncated files raise many types
        raise EdgecompressError(f"{path}: cannot read CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise EdgecompressError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    # Tolerate str keys (files re-saved from Python 3) as well as the official bytes keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in data.items()}


def _load_cifar(name: str, root: str | None, image_size: int) -> RawData:
    """CIFAR-10/100 python-pickle layout. The pickles are read directly rather than through
    torchvision.datasets.CIFAR*, whose md5 integrity check rejects any non-official (e.g. test) file;
    the parsing is the same as torchvision's."""
    folder, train_files, test_file, meta_file, label_key, names_key = _CIFAR[name]
    expects = f"{name} expects {_CIFAR_LAYOUT[name]} (python pickle version)"
    if root is None:
        raise EdgecompressError(f"data.root=None: a root folder is required; {expects}")
    base = Path(root)
    if not base.is_dir():
        raise EdgecompressError(f"data.root='{root}': not found; {expects}")
    if (base / folder).is_dir():  # root may be the parent or the folder itself
        base = base / folder
    for fname in [*train_files, test_file, meta_file]:
        if not (base / fname).is_file():
            raise EdgecompressError(f"data.root='{root}': missing {base / fname}; {expects}")
    meta = _read_pickle(base / meta_file)
    if names_key not in meta:
        raise EdgecompressError(f"{base / meta_file}: no {names_key.decode()!r} entry")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    pools = {}
    for pool, files in (("train", train_files), ("test", [test_file])):
        images, labels = [], []
        for fname in files:
            batch = _read_pickle(base / fname)
            if b"data" not in batch or label_key not in batch:
                raise EdgecompressError(f"{base / fname}: expected keys b'data' and {label_key!r}")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(batch[label_key]) != data.shape[0]:
                raise EdgecompressError(f"{base / fname}: data must be N x 3072 with N labels, "
                                        f"got {data.shape} and {len(batch[label_key])} labels")
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))  # rows are R,G,B planes
            labels.append(torch.as_tensor(batch[label_key], dtype=torch.int64))
        lab = torch.cat(labels)
        if len(lab) and (lab.min() < 0 or lab.max() >= len(classes)):
            raise EdgecompressError(f"{base}: {pool} labels outside 0..{len(classes) - 1}")
        pools[pool] = (_resize_uint8(torch.cat(images), image_size), lab)
    return RawData(classes, pools)


def _load_image(path: Path, size: int) -> torch.Tensor:
    """Load as RGB, resize the shorter side to `size`, center crop to size x size; uint8 3 x S x S."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, ValueError, ...
        raise EdgecompressError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_tree(folder: Path, classes: list[str], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm import tqdm

    items: list[tuple[Path, int]] = []
    for cdir in _class_dirs(folder):
        if cdir.name not in classes:
            raise EdgecompressError(f"{cdir}: class folder not among the train classes {classes}")
        files = sorted(p for p in cdir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise EdgecompressError(f"{cdir}: class folder holds no images "
                                    f"(expected {', '.join(sorted(IMAGE_EXTENSIONS))} files)")
        items += [(p, classes.index(cdir.name)) for p in files]
    images = [_load_image(p, image_size)
              for p, _ in tqdm(items, desc=f"loading {folder.name}", disable=len(items) <= 500)]
    return torch.stack(images), torch.tensor([c for _, c in items], dtype=torch.int64)


def _load_imagefolder(root: str | None, image_size: int) -> RawData:
    """One folder per class under root; split subfolders train/ + test/ (+ val/ or valid/) if present."""
    expects = "imagefolder expects <root>/<class>/<image> or <root>/{train,test[,val]}/<class>/<image>"
    if root is None:
        raise EdgecompressError(f"data.root=None: a root folder is required; {expects}")
    base = Path(root)
    if not base.is_dir():
        raise EdgecompressError(f"data.root='{root}': not found; {expects}")
    split_dirs = {"train": base / "train", "test": base / "test", "val": base / "val"}
    if not split_dirs["val"].is_dir():
        split_dirs["val"] = base / "valid"
    predefined = split_dirs["train"].is_dir() and split_dirs["test"].is_dir()
    top = split_dirs["train"] if predefined else base
    classes = [p.name for p in _class_dirs(top)]
    if not classes:
        raise EdgecompressError(f"data.root='{root}': no class folders in {top}; {expects}")
    if not predefined:
        return RawData(classes, {"all": _load_tree(base, classes, image_size)})
    pools = {s: _load_tree(d, classes, image_size) for s, d in split_dirs.items() if d.is_dir()}
    return RawData(classes, pools)


DATASETS: dict[str, Callable[[str | None, int], RawData]] = {
    "digits": _load_digits,
    "cifar10": lambda root, size: _load_cifar("cifar10", root, size),
    "cifar100": lambda root, size: _load_cifar("cifar100", root, size),
    "imagefolder": _load_imagefolder,
}


def dataset_names() -> list[str]:
    """Names accepted by `prepare_dataset(name=...)`."""
    return list(DATASETS)


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


def _validate(name: str, image_size: int, val_fraction: float, test_fraction: float,
              max_samples: int | None) -> None:
    if name not in DATASETS:
        raise EdgecompressError(f"data.name='{name}': unknown data set; expected one of {dataset_names()}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise EdgecompressError(f"data.image_size={image_size!r}: expected an integer >= 8")
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise EdgecompressError(f"data.{key}={value!r}: expected a number in (0, 1)")
    if val_fraction + test_fraction >= 1:
        raise EdgecompressError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction}: "
                                "expected < 1 so that the train split is not empty")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples <= 0):
        raise EdgecompressError(f"data.max_samples={max_samples!r}: expected a positive integer or null")


def prepare_dataset(*, name: str, root: str | None, image_size: int, val_fraction: float,
                    test_fraction: float, max_samples: int | None, seed: int, out_dir: str | Path) -> dict:
    """Load a data set, split it (stratified, seeded) and cache it as uint8 tensors in `out_dir`.

    Carved splits take `test_fraction`, then `val_fraction` (both of the whole pool). With a predefined
    test split (CIFAR, imagefolder train/test) `test_fraction` is unused and val is carved from the
    train pool with `val_fraction` unless a val split exists. `max_samples` subsamples (stratified)
    the whole pool, or the train pool when splits are predefined. Everything is loaded and checked
    before any file is written, and each file is written atomically (meta.json last).

    Returns:
        The meta dict written to `out_dir/meta.json`.
    Raises:
        EdgecompressError: bad parameters, missing/unreadable data, or a class too small to split.
    """
    _validate(name, image_size, val_fraction, test_fraction, max_samples)
    raw = DATASETS[name](root, image_size)
    classes, rng = raw.classes, np.random.default_rng(seed)
    carved = "all" in raw.pools
    pool_images, pool_labels = raw.pools["all" if carved else "train"]
    y = pool_labels.numpy()
    idx = np.arange(len(y))
    if max_samples is not None and max_samples < len(y):
        present = int((np.bincount(y, minlength=len(classes)) > 0).sum())
        if max_samples < present:
            raise EdgecompressError(f"data.max_samples={max_samples}: expected at least the number of "
                                    f"classes ({present}) so that every class is kept")
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
    mean, std = _channel_stats(splits["train"][0])
    meta = {
        "name": name, "root": None if root is None else str(root), "num_classes": len(classes),
        "classes": classes, "image_size": image_size, "mean": mean, "std": std,
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
    if split not in SPLITS:
        raise EdgecompressError(f"split={split!r}: expected one of {list(SPLITS)}")
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
    """v2 pipeline on uint8 CHW tensors from the `augment` dict; None when nothing is enabled."""
    from torchvision.transforms import v2

    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise EdgecompressError(f"train.augment.{unknown[0]}: unknown key; "
                                f"expected {', '.join(AUGMENT_KEYS)}")
    for key in AUGMENT_KEYS[1:]:
        value = augment.get(key, 0) or 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise EdgecompressError(f"train.augment.{key}={value!r}: expected a number >= 0 (0 = off)")
    erasing = augment.get("random_erasing", 0) or 0
    if erasing > 1:
        raise EdgecompressError(f"train.augment.random_erasing={erasing!r}: expected a probability in [0, 1] "
                                "(0 = off)")
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgecompressError(f"batch_size={batch_size!r}: expected a positive integer")
    meta = load_meta(prepared_dir)
    images, labels = load_split(prepared_dir, split)
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples <= 0:
            raise EdgecompressError(f"max_samples={max_samples!r}: expected a positive integer or None")
        images, labels = images[:max_samples], labels[:max_samples]
    transform = _build_augment(augment, tuple(images.shape[-2:])) if train else None
    dataset = _SplitDataset(images, labels, transform, normalize_transform(meta))
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator,
                      num_workers=num_workers, drop_last=False)
