"""Transfer learning's model surgery, shared by the chain (`model.teacher/student.train_stages`) and the
zoo's fine-tuning: a fresh classification head for another class count, and freezing everything but
named parameter prefixes.

Frozen means frozen: a BatchNorm layer without a trainable parameter becomes
`torchvision.ops.FrozenBatchNorm2d` during training, so batches of the new data set cannot overwrite
its running statistics (train-mode BatchNorm would, even with requires_grad=False). `unfreeze_batchnorm`
turns those layers back into ordinary BatchNorm2d with the same values before saving, so the checkpoint
is the plain registry architecture and loads with `models.load_checkpoint` (strict).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from edgecompress import EdgecompressError
from edgecompress.config import check


def _matches(name: str, prefix: str) -> bool:
    """Prefix match on dotted-name boundaries: 'layer4' matches 'layer4.0.conv1.weight', not 'layer40.x'."""
    return name == prefix or name.startswith(prefix + ".")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Replace the submodule at dotted `name` (Sequential indices included); returns the root."""
    if not name:
        return module
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
    return model


def head_name(model: nn.Module) -> str:
    """Dotted name of the classification head: the last nn.Linear in module order."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise EdgecompressError(f"{type(model).__name__}: no nn.Linear classification head to replace")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final classification Linear by a fresh `num_classes`-way one (in place).

    The last nn.Linear in module order is the head of every torchvision classifier (ResNet `fc`,
    MobileNet/EfficientNet `classifier[-1]`). Its input width is kept; its ImageNet weights are dropped
    because its 1,000 outputs stand for other classes. The new layer is initialised from torch's global
    RNG (seed it for a reproducible head).
    """
    check(isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1,
          "num_classes", num_classes, "must be an integer >= 1")
    name = head_name(model)
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    return _set_submodule(model, name, new)


def _to_frozen(bn: nn.BatchNorm2d) -> nn.Module:
    """A FrozenBatchNorm2d with `bn`'s affine parameters, running statistics and eps."""
    from torchvision.ops import FrozenBatchNorm2d

    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps).to(device=bn.weight.device, dtype=bn.weight.dtype)
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(bn, key))
    # Not part of FrozenBatchNorm2d's state; kept so unfreeze_batchnorm restores the layer exactly.
    frozen.bn_settings = {"momentum": bn.momentum, "num_batches_tracked": int(bn.num_batches_tracked)}
    return frozen


def freeze_except(model: nn.Module, train_prefixes: Iterable[str], key: str = "train_stages") -> dict[str, int]:
    """Train only the parameters whose dotted name starts with one of `train_prefixes`; freeze the rest.

    Every prefix must match at least one parameter (a typo would otherwise silently freeze a stage).
    BatchNorm2d layers whose parameters are all frozen are replaced by FrozenBatchNorm2d so that their
    running statistics do not move either (undo with `unfreeze_batchnorm` before saving).

    Returns:
        {trainable_params, frozen_params (element counts), frozen_batchnorm_layers}.
    Raises:
        EdgecompressError: one line naming `key` (the params key), the prefix and the top-level modules.
    """
    prefixes = [str(p).strip().rstrip(".") for p in train_prefixes]
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not prefix or not any(_matches(name, prefix) for name in names):
            tops = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
            raise EdgecompressError(f"{key}: {prefix!r} matches no parameter of "
                                    f"{type(model).__name__}; allowed: top-level modules {', '.join(tops)} "
                                    "or dotted names below them (e.g. layer4.1, features.17)")
    counts = {"trainable_params": 0, "frozen_params": 0, "frozen_batchnorm_layers": 0}
    for name, param in model.named_parameters():
        trains = any(_matches(name, prefix) for prefix in prefixes)
        param.requires_grad_(trains)
        counts["trainable_params" if trains else "frozen_params"] += param.numel()
    for name, module in list(model.named_modules()):
        # affine + running stats: what every torchvision classifier's BatchNorm2d has and FrozenBatchNorm2d keeps
        if (type(module) is nn.BatchNorm2d and module.affine and module.track_running_stats
                and not any(p.requires_grad for p in module.parameters())):
            model = _set_submodule(model, name, _to_frozen(module))
            counts["frozen_batchnorm_layers"] += 1
    return counts


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every FrozenBatchNorm2d back into an ordinary BatchNorm2d with the same values (frozen
    parameters, eval mode), so the state dict matches the plain architecture's (in place; returns it)."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, module in list(model.named_modules()):
        if not isinstance(module, FrozenBatchNorm2d):
            continue
        settings = getattr(module, "bn_settings", {})
        bn = nn.BatchNorm2d(module.weight.numel(), eps=module.eps, momentum=settings.get("momentum", 0.1),
                            device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, key).copy_(getattr(module, key))
            bn.num_batches_tracked.fill_(settings.get("num_batches_tracked", 0))
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)
        model = _set_submodule(model, name, bn.eval())
    return model
