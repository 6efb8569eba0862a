"""Structured channel pruning with Torch-Pruning's dependency graph.

Unstructured (masked) sparsity saves nothing on a CPU or an edge accelerator without sparse kernels,
so this stage removes whole channels: Torch-Pruning traces the model, groups every layer whose
channels are coupled (a conv's outputs, the BN after it, the next conv's inputs, and every layer on the
same residual stream) and deletes the same indices in all of them. The result is a smaller dense
network; `models.save_checkpoint`/`load_checkpoint` rebuild its narrower layers from the state dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from edgecompress import EdgecompressError
from edgecompress.config import Settings, check, check_choice
from edgecompress.models import count_params

log = logging.getLogger(__name__)

# Factories, not instances: Taylor/Magnitude scorers are cheap but a fresh one per run avoids state
# leaking between runs. Group* variants sum the score over all coupled layers of a group (the DepGraph
# paper's choice), so a residual channel is ranked by every conv/BN that uses it, not one of them.
IMPORTANCES: dict[str, Callable[[], object]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


def importance_names() -> list[str]:
    """Names accepted by `PruneConfig.importance`, sorted."""
    return sorted(IMPORTANCES)


@dataclass(frozen=True)
class PruneConfig(Settings):
    """How channels are removed (the method part of the `prune` block).

    Attributes:
        ratio: fraction of channels removed from each prunable group, in [0, 1); 0 is a no-op (a
            baseline run through the same stage).
        importance: channel ranking criterion, one of `importance_names()`.
        global_pruning: rank channels of all layers together, so robust layers lose more and
            sensitive ones less (the overall fraction is still `ratio`). YAML name: `global`.
        iterative_steps: reach `ratio` in this many equal steps, re-ranking after each one.
        round_to: keep channel counts multiples of this (SIMD/tensor-core friendly); None = exact.
    """

    ratio: float = 0.2  # fraction of channels removed per prunable group, [0, 1)
    importance: str = "l1"  # l1 | l2 | taylor | random (control)
    global_pruning: bool = field(default=False, metadata={"yaml": "global"})  # rank across layers
    iterative_steps: int = 1  # prune in this many steps, re-ranking after each
    round_to: int | None = None  # keep channel counts multiples of this; null = exact

    def validate(self) -> None:
        check(0.0 <= self.ratio < 1.0, "ratio", self.ratio, "must be a number in [0, 1)")
        check_choice(self.importance, "importance", importance_names())
        check(self.iterative_steps >= 1, "iterative_steps", self.iterative_steps, "must be an integer >= 1")
        check(self.round_to is None or self.round_to >= 1, "round_to", self.round_to,
              "must be null or an integer >= 1")

    def config(self) -> "PruneConfig":
        """Just the method's settings (a stage block deriving from this class adds its own)."""
        return PruneConfig(**{f.name: getattr(self, f.name) for f in fields(PruneConfig)})


def _conv_channels(model: nn.Module) -> int:
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _measure(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs)  # works on a deep copy, in eval mode
    return {"params": count_params(model), "macs": int(macs), "channels": _conv_channels(model)}


def _default_ignored(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """Every Linear producing the model's output width: pruning it would change the class count."""
    with torch.no_grad():
        width = model(example_inputs).shape[1]
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == width]


def _accumulate_gradients(model, batches, loss_fn, device) -> None:
    """Fill `.grad` for Taylor importance (|w * dL/dw| summed over the batches)."""
    model.zero_grad(set_to_none=True)
    seen = 0
    for x, y in batches:
        loss_fn(model(x.to(device)), y.to(device)).backward()
        seen += 1
    if seen == 0:
        raise EdgecompressError("prune.importance='taylor' needs calibration batches (gradients); got none")


def _prune_steps(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig,
                 ignored_layers: list[nn.Module], taylor: tuple[Any, Callable] | None) -> int:
    """Torch-Pruning's pruner run for `config.iterative_steps` steps (`taylor`: the gradient batches and
    loss to score with before each step); returns the steps run."""
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=IMPORTANCES[config.importance](),
        pruning_ratio=config.ratio,
        global_pruning=config.global_pruning,
        iterative_steps=config.iterative_steps,
        ignored_layers=ignored_layers,
        round_to=config.round_to,
    )
    device = next(model.parameters()).device
    for step in range(1, config.iterative_steps + 1):
        if taylor is not None:
            _accumulate_gradients(model, taylor[0], taylor[1], device)
        pruner.step()
        log.info("prune step %d/%d: %d params", step, config.iterative_steps, count_params(model))
    model.zero_grad(set_to_none=True)
    return config.iterative_steps


def prune_model(
    model: nn.Module,
    example_inputs: torch.Tensor,
    config: PruneConfig,
    *,
    ignored_layers: list[nn.Module] | None = None,
    calibration_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable | None = None,
) -> dict[str, Any]:
    """Remove channels from `model` in place and report what it saved.

    The model is traced and scored in eval mode so BatchNorm running statistics are not touched:
    pruning only deletes weights, it never changes the ones kept (fine-tuning is a separate stage).
    The original train/eval mode is restored afterwards; any `.grad` is cleared.

    Per group Torch-Pruning keeps `int(n * (1 - ratio))` channels, rounded down to `round_to`; a group
    that would end up empty (e.g. 8 channels with round_to=16) is left unpruned rather than broken,
    so the report's ratios are the ones actually reached.

    Args:
        model: the network; its layers are replaced by narrower ones.
        example_inputs: a batch (e.g. 1x3x32x32) on the model's device, for tracing and MAC counts.
        config: ratio, criterion and schedule.
        ignored_layers: modules whose output channels are kept. None = every Linear whose
            out_features equals the model's output width (the classifier); an explicit list
            replaces that default.
        calibration_batches: (inputs, targets) batches for "taylor" (a few are enough); they are
            re-iterated at each step, so a one-shot iterator is materialised first.
        loss_fn: `loss_fn(logits, targets)` for "taylor"; default cross-entropy.
    Returns:
        params/macs/channels before and after, the removed ratios, steps run and the config.
    Raises:
        EdgecompressError: "taylor" without (or with empty) calibration batches.
    """
    taylor = config.importance == "taylor"
    if taylor and calibration_batches is None:
        raise EdgecompressError("prune.importance='taylor' needs calibration batches (gradients); none given")
    if taylor and iter(calibration_batches) is calibration_batches:
        calibration_batches = list(calibration_batches)
    loss_fn = loss_fn or F.cross_entropy

    was_training = model.training
    try:
        model.eval()
        before = _measure(model, example_inputs)
        if ignored_layers is None:
            ignored_layers = _default_ignored(model, example_inputs)
        steps = _prune_steps(model, example_inputs, config, ignored_layers,
                             (calibration_batches, loss_fn) if taylor else None) if config.ratio > 0 else 0
        after = _measure(model, example_inputs)
    finally:
        model.train(was_training)

    def removed(key: str) -> float:
        return 1.0 - after[key] / before[key] if before[key] else 0.0

    report = {
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "channels_before": before["channels"], "channels_after": after["channels"],
        "channel_ratio_removed": removed("channels"),
        "param_ratio_removed": removed("params"),
        "mac_ratio_removed": removed("macs"),
        "steps": steps,
        "config": config.config().to_dict(),
    }
    log.info("pruned %s: params %d -> %d, MACs %d -> %d", config.importance, before["params"],
             after["params"], before["macs"], after["macs"])
    return report

