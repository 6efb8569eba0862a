"""Data set readers: each turns a source on disk (or scikit-learn's embedded digits) into uint8
images and labels, before any split. `data.prepare_dataset` picks one by `data.name` from `DATASETS`;
adding a data set is one reader and one entry there. Nothing is ever downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from edgecompress import EdgecompressError
from edgecompress.io import read_image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_CIFAR = {  # name -> (folder, train files, test file, meta file, label key, class-name key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}
_CIFAR_LAYOUT = {
    "cifar10": "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "<root>/cifar-100-python/{train,test,meta}",
}
# What unpickling a CIFAR file may construct: numpy arrays (protocol 2 as in the official release, the
# current default, and protocol 5's out-of-band form; numpy 1 and 2 module paths), numpy scalars (labels
# re-saved as numpy ints) and `_codecs.encode`, which Python 3 uses for bytes under protocol 2.
# Anything else (os.system, builtins.eval, ...) is refused: a pickle may run any callable it names.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}
MAX_LISTED = 10  # bad files named in one error; the rest are counted


def _listing(items: list[str]) -> str:
    """The first MAX_LISTED items joined with "; ", plus how many more, to keep an error on one line."""
    more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def _require_folder(root: str, expects: str) -> Path:
    """`root` as a Path, checked to be an existing folder (a file or a missing path is one clear line)."""
    base = Path(root)
    if base.is_file():
        raise EdgecompressError(f"data.root='{root}' is a file, not a folder; {expects}")
    if not base.is_dir():
        raise EdgecompressError(f"data.root='{root}': not found; {expects}")
    return base


@dataclass
class RawData:
    """A loaded data set before splitting: pool "all" (split is carved) or "train"/"test"[/"val"]."""

    classes: list[str]
    pools: dict[str, tuple[torch.Tensor, torch.Tensor]]  # pool -> (uint8 N x 3 x S x S, int64 N)


def _resize_uint8(images: torch.Tensor, size: int, resize_size: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Bilinear resize of a uint8 N x 3 x H x W batch of square images to size x size, in chunks to bound
    memory; with `resize_size`, to resize_size x resize_size first and then the centre size x size crop
    (the resize/crop ratio pretrained weights were evaluated with, e.g. 256/224)."""
    step = resize_size or size
    if tuple(images.shape[-2:]) == (size, size) and step == size:
        return images
    top = (step - size) // 2
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = F.interpolate(images[start:start + chunk].float(), size=(step, step), mode="bilinear",
                             align_corners=False, antialias=True)
        out[start:start + chunk] = part[..., top:top + size, top:top + size].round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_digits(root: str | None, image_size: int, resize_size: int | None = None) -> RawData:
    """sklearn's 1,797 8x8 handwritten digits (shipped with scikit-learn, no download); root ignored."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0))).to(torch.uint8)
    images = _resize_uint8(pixels.unsqueeze(1).repeat(1, 3, 1, 1).contiguous(), image_size, resize_size)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return RawData([str(n) for n in digits.target_names], {"all": (images, labels)})


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only arrays, lists, numbers and bytes (see `_PICKLE_ALLOWED`)."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle, encoding="bytes")  # encoding="bytes" as in the CIFAR docs
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise EdgecompressError(f"{self.path}: refused to unpickle {module}.{name}: "
                                    "a CIFAR pickle holds only arrays, lists, numbers and bytes")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            data = _CifarUnpickler(handle, path).load()
    except EdgecompressError:
        raise
    except Exception as exc:  # corrupt/truncated files raise many types
        raise EdgecompressError(f"{path}: cannot read CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise EdgecompressError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    # Tolerate str keys (files re-saved from Python 3) as well as the official bytes keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in data.items()}


def _load_cifar(name: str, root: str | None, image_size: int, resize_size: int | None = None) -> RawData:
    """CIFAR-10/100 python-pickle layout. The pickles are read directly rather than through
    torchvision.datasets.CIFAR*, whose md5 integrity check rejects any non-official (e.g. test) file;
    the parsing is the same as torchvision's."""
    folder, train_files, test_file, meta_file, label_key, names_key = _CIFAR[name]
    expects = f"{name} expects {_CIFAR_LAYOUT[name]} (python pickle version)"
    if root is None:
        raise EdgecompressError(f"data.root=None: a root folder is required; {expects}")
    base = _require_folder(root, expects)
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
        pools[pool] = (_resize_uint8(torch.cat(images), image_size, resize_size), lab)
    return RawData(classes, pools)


def _load_image(path: Path, size: int, resize_size: int | None = None) -> torch.Tensor:
    """Load as RGB, resize the shorter side to `resize_size` (default `size`), centre crop to size x size;
    uint8 3 x S x S."""
    img = read_image(path)
    w, h = img.size
    step = max(resize_size or size, size)
    scale = step / min(w, h)
    new_w, new_h = max(step, round(w * scale)), max(step, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _unreadable(path: Path, base: Path, exc: EdgecompressError) -> str:
    """`<path relative to base> (<short reason>)`: the decoder's own message (read_image keeps it as the
    exception's context) without the path, which is already named."""
    cause = exc.__context__ or exc
    reason = str(cause).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(cause).__name__
    return f"{path.relative_to(base).as_posix()} ({reason.splitlines()[0][:120]})"


def _load_tree(folder: Path, classes: list[str], image_size: int, base: Path, failures: list[str],
               resize_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images under folder/<class>/; unreadable ones are appended to `failures` (relative to
    `base`) rather than raised, so one error can list every bad file of the data set."""
    items: list[tuple[Path, int]] = []
    for cdir in _class_dirs(folder):
        if cdir.name not in classes:
            raise EdgecompressError(f"{cdir}: class folder not among the train classes {classes}")
        files = sorted(p for p in cdir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise EdgecompressError(f"{cdir}: class folder holds no images "
                                    f"(expected {', '.join(sorted(IMAGE_EXTENSIONS))} files)")
        items += [(p, classes.index(cdir.name)) for p in files]
    images, labels = [], []
    for path, label in tqdm(items, desc=f"loading {folder.name}", disable=len(items) <= 500):
        try:
            images.append(_load_image(path, image_size, resize_size))
            labels.append(label)
        except EdgecompressError as exc:
            failures.append(_unreadable(path, base, exc))
    if not images:
        return torch.empty((0, 3, image_size, image_size), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _load_imagefolder(root: str | None, image_size: int, resize_size: int | None = None) -> RawData:
    """One folder per class under root; split subfolders train/ + test/ (+ val/ or valid/) if present."""
    expects = "imagefolder expects <root>/<class>/<image> or <root>/{train,test[,val]}/<class>/<image>"
    if root is None:
        raise EdgecompressError(f"data.root=None: a root folder is required; {expects}")
    base = _require_folder(root, expects)
    split_dirs = {"train": base / "train", "test": base / "test", "val": base / "val"}
    if not split_dirs["val"].is_dir():
        split_dirs["val"] = base / "valid"
    predefined = split_dirs["train"].is_dir() and split_dirs["test"].is_dir()
    top = split_dirs["train"] if predefined else base
    classes = [p.name for p in _class_dirs(top)]
    if not classes:
        raise EdgecompressError(f"data.root='{root}': no class folders in {top}; {expects}")
    failures: list[str] = []
    trees = {s: d for s, d in split_dirs.items() if d.is_dir()} if predefined else {"all": base}
    pools = {s: _load_tree(d, classes, image_size, base, failures, resize_size) for s, d in trees.items()}
    if failures:
        raise EdgecompressError(f"data.root='{root}': {len(failures)} unreadable image(s): {_listing(failures)}; "
                                "fix or remove them")
    return RawData(classes, pools)


# name -> reader(root, image_size, resize_size)
DATASETS: dict[str, Callable[[str | None, int, int | None], RawData]] = {
    "digits": _load_digits,
    "cifar10": lambda root, size, resize=None: _load_cifar("cifar10", root, size, resize),
    "cifar100": lambda root, size, resize=None: _load_cifar("cifar100", root, size, resize),
    "imagefolder": _load_imagefolder,
}


def dataset_names() -> list[str]:
    """Names accepted by `data.name`."""
    return list(DATASETS)
