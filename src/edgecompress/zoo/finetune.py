"""Fine-tuning a pretrained torchvision classifier on a new data set (CIFAR-100 by default).

The ImageNet model keeps its stem and body; its classification head is replaced by a fresh
`num_classes`-way Linear, and only the parameters named by `finetune.train_stages` train, with frozen
BatchNorm statistics (`transfer`: the same surgery the chain's `model.*.train_stages` uses).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

from edgecompress import EdgecompressError
from edgecompress.config import check_choice
from edgecompress.models import ARCHITECTURES, arch_config
from edgecompress.transfer import freeze_except, head_name, replace_head
from edgecompress.weights import PRETRAINED, ResolvedWeights, load_pretrained, resolve_weights

log = logging.getLogger(__name__)


def finetune_architectures() -> list[str]:
    """Registry architectures that are torchvision ImageNet classifiers (the ones with official weights
    that `models.load_checkpoint` can rebuild): resnet18/34/50, mobilenet_v2/v3, efficientnet_b0."""
    return sorted(name for name, spec in ARCHITECTURES.items() if spec.family == "torchvision")


def resolve_finetune_weights(arch: str, weights: str, weights_dir: str | None) -> ResolvedWeights:
    """Check `arch` and find its official ImageNet weights file offline (`weights.resolve_weights`);
    cheap, so a stage calls it before any data preparation. weights='random' resolves to no file.

    Raises:
        EdgecompressError: an unsupported architecture, or the missing weights files and where to put one.
    """
    check_choice(arch, "finetune.arch", finetune_architectures())
    return resolve_weights([arch], weights_dir, weights)[arch]


def pretrained_classifier(arch: str, num_classes: int, *, train_prefixes: Iterable[str], weights: str = PRETRAINED,
                          weights_dir: str | None = None, resolved: ResolvedWeights | None = None
                          ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The ImageNet `arch` with its weights loaded, a fresh `num_classes`-way head, and everything but
    `train_prefixes` frozen (`freeze_except`); the new head must be among the trained parameters.

    small_input is False: the ImageNet stem (7x7 stride-2 conv + max-pool for ResNets, stride-2 first
    conv for MobileNet/EfficientNet) is kept, because its weights are part of what is transferred; the
    registry's 32x32 stem would start from random weights. On 32x32 CIFAR images the last feature map is
    then 1x1; a larger `finetune.data.image_size` gives the stem room at a higher cost.

    Args:
        resolved: weights already found by `resolve_finetune_weights` (else resolved here).
    Returns:
        (model in train mode, its checkpoint `arch` entry, a summary for the metrics: weights label and
        file, train_stages, head, trainable/frozen parameter counts, frozen BatchNorm layers).
    """
    if resolved is None:
        resolved = resolve_finetune_weights(arch, weights, weights_dir)
    elif resolved.arch != arch:
        raise EdgecompressError(f"weights resolved for {resolved.arch!r}, not finetune.arch={arch!r}")
    prefixes = [str(p) for p in train_prefixes]
    model = replace_head(load_pretrained(resolved), num_classes)
    head = head_name(model)
    counts = freeze_except(model, prefixes, key="finetune.train_stages")
    if not all(p.requires_grad for p in model.get_submodule(head).parameters()):
        raise EdgecompressError(f"finetune.train_stages={prefixes} leaves the new {num_classes}-way head "
                                f"'{head}' frozen at random weights; add '{head}'")
    summary = {"weights": resolved.label, "weights_file": str(resolved.path) if resolved.path else None,
               "pretrained": resolved.path is not None, "train_stages": prefixes, "head": head,
               "small_input": False, **counts}
    log.info("%s: %s weights, head '%s' -> %d classes, %d trainable / %d frozen params, %d frozen BatchNorm "
             "layers", arch, resolved.label, head, num_classes, counts["trainable_params"], counts["frozen_params"],
             counts["frozen_batchnorm_layers"])
    return model.train(), arch_config(arch, num_classes, 1.0, small_input=False), summary
