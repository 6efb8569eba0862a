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


TARGET_KINDS = ("ratio", "macs", "latency")


@dataclass(frozen=True)
class PruneTarget(Settings):
    """When pruning stops (`prune.target`).

    Attributes:
        kind: "ratio": remove `ratio` of every group's channels in `iterative_steps` steps (the MACs
            removed follow from it); "macs" / "latency": prune in the same steps and stop at the first
            step whose MACs / measured latency is at most `value` x the unpruned model's (`ratio` is then
            the ratio the last step would reach: the most that may be removed).
        value: the fraction of the unpruned MACs / latency to reach, in (0, 1); null for "ratio".
    """

    kind: str = "ratio"  # ratio | macs | latency
    value: float | None = None  # macs / latency: stop at <= value x the unpruned model's

    def validate(self) -> None:
        check_choice(self.kind, "kind", TARGET_KINDS)
        if self.kind == "ratio":
            check(self.value is None, "value", self.value, "must be null for kind 'ratio' (the ratio is prune.ratio)")
        else:
            check(self.value is not None and 0 < self.value < 1, "value", self.value,
                  f"must be a number in (0, 1) for kind '{self.kind}': the fraction of the unpruned {self.kind}")


@dataclass(frozen=True)
class PruneConfig(Settings):
    """How channels are removed (the method part of the `prune` block).

    Attributes:
        ratio: fraction of channels removed from each prunable group, in [0, 1); 0 is a no-op (a
            baseline run through the same stage).
        ratios: {module-name prefix: ratio} overrides of `ratio` for the layers under a prefix (the
            longest matching prefix wins; Torch-Pruning's `pruning_ratio_dict`; with global ranking, each
            ratio's layers are ranked among themselves); null = `ratio` everywhere.
        importance: channel ranking criterion, one of `importance_names()`.
        global_pruning: rank channels of all layers together, so robust layers lose more and
            sensitive ones less (the overall fraction is still `ratio`). YAML name: `global`.
        iterative_steps: reach `ratio` in this many equal steps, re-ranking after each one.
        round_to: keep channel counts multiples of this (SIMD-friendly); Torch-Pruning rounds the kept
            count down, and a group that would end up empty is left whole. None = exact.
        target: when to stop (`PruneTarget`).
    """

    ratio: float = 0.2  # fraction of channels removed per prunable group, [0, 1)
    ratios: dict[str, float] | None = None  # {module-name prefix: ratio}; null = ratio everywhere
    importance: str = "l1"  # l1 | l2 | taylor | random (control)
    global_pruning: bool = field(default=False, metadata={"yaml": "global"})  # rank across layers
    iterative_steps: int = 1  # prune in this many steps, re-ranking after each
    round_to: int | None = None  # keep channel counts multiples of this; null = exact
    target: PruneTarget = field(default_factory=PruneTarget)

    def validate(self) -> None:
        check(0.0 <= self.ratio < 1.0, "ratio", self.ratio, "must be a number in [0, 1)")
        for prefix, value in (self.ratios or {}).items():
            check(isinstance(value, (int, float)) and 0.0 <= value < 1.0, f"ratios.{prefix}", value,
                  "must be a number in [0, 1)")
        check_choice(self.importance, "importance", importance_names())
        check(self.iterative_steps >= 1, "iterative_steps", self.iterative_steps, "must be an integer >= 1")
        check(self.round_to is None or self.round_to >= 1, "round_to", self.round_to,
              "must be null or an integer >= 1")

    def config(self) -> "PruneConfig":
        """Just the method's settings (a stage block deriving from this class adds its own)."""
        return PruneConfig(**{f.name: getattr(self, f.name) for f in fields(PruneConfig)})


def slow_int8_depthwise(model: nn.Module) -> list[str]:
    """Depthwise convolutions whose channel count PyTorch's x86 FX INT8 kernel runs on its slow path: above
    112 and not a multiple of 8 (one 3x3 layer at 40x40: 121 channels 112 ms against 1.1 ms at 120,
    docs/experiments/int8_depthwise_channels.py). Pruning leaves such counts unless `prune.round_to` is 8."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            == module.out_channels and module.out_channels > 112 and module.out_channels % 8]


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


# a probe measures the model after each step: {"latency_ms": ...} or {"val_accuracy": ...}
StepProbe = Callable[[nn.Module], dict[str, float]]


def _ratio_dict(model: nn.Module, ratios: dict[str, float] | None) -> dict[nn.Module, float] | None:
    """Torch-Pruning's per-layer ratios: every conv/linear under a prefix of `ratios` (longest wins).
    A dependency group takes the ratio of the layer that heads it, as Torch-Pruning does."""
    if not ratios:
        return None
    out = {}
    for name, module in model.named_modules():
        hits = [p for p in ratios if isinstance(module, (nn.Conv2d, nn.Linear)) and (name == p or name.startswith(p + "."))]
        if hits:
            out[module] = float(ratios[max(hits, key=len)])
    unmatched = [p for p in ratios if not any(n == p or n.startswith(p + ".") for n, _ in model.named_modules())]
    if unmatched:
        raise EdgecompressError(f"prune.ratios: no layer of the model is named {unmatched[0]!r} or under it "
                                f"(top-level names: {', '.join(n for n, _ in model.named_children())})")
    return out


def _record(step: int, model: nn.Module, example_inputs: torch.Tensor, probes: list[StepProbe]) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step, **_measure(model, example_inputs)}
    for probe in probes:
        record.update(probe(model))
    return record


def _target_met(target: PruneTarget, record: dict[str, Any], first: dict[str, Any]) -> bool:
    if target.kind == "ratio":
        return False
    key = "macs" if target.kind == "macs" else "latency_ms"
    return record[key] <= target.value * first[key]


def _prune_steps(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig,
                 ignored_layers: list[nn.Module], taylor: tuple[Any, Callable] | None,
                 probes: list[StepProbe]) -> list[dict[str, Any]]:
    """Torch-Pruning's pruner run for up to `config.iterative_steps` steps (`taylor`: the gradient batches
    and loss to score with before each step), stopping early at the first step that meets a macs or
    latency target. Returns one record per step, step 0 being the unpruned model: params, MACs, conv
    channels and what each probe measured."""
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        importance=IMPORTANCES[config.importance](),
        pruning_ratio=config.ratio,
        pruning_ratio_dict=_ratio_dict(model, config.ratios),
        global_pruning=config.global_pruning,
        iterative_steps=config.iterative_steps,
        ignored_layers=ignored_layers,
        round_to=config.round_to,
    )
    device = next(model.parameters()).device
    records = [_record(0, model, example_inputs, probes)]
    for step in range(1, config.iterative_steps + 1):
        if taylor is not None:
            _accumulate_gradients(model, taylor[0], taylor[1], device)
        pruner.step()
        model.zero_grad(set_to_none=True)
        records.append(_record(step, model, example_inputs, probes))
        log.info("prune step %d/%d: %s", step, config.iterative_steps,
                 ", ".join(f"{k} {v:.4g}" for k, v in records[-1].items() if k != "step"))
        if _target_met(config.target, records[-1], records[0]):
            break
    return records


def prune_model(
    model: nn.Module,
    example_inputs: torch.Tensor,
    config: PruneConfig,
    *,
    ignored_layers: list[nn.Module] | None = None,
    calibration_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable | None = None,
    latency_probe: StepProbe | None = None,
    accuracy_probe: StepProbe | None = None,
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
        config: ratio, criterion, schedule and target.
        ignored_layers: modules whose output channels are kept. None = every Linear whose
            out_features equals the model's output width (the classifier); an explicit list
            replaces that default.
        calibration_batches: (inputs, targets) batches for "taylor" (a few are enough); they are
            re-iterated at each step, so a one-shot iterator is materialised first.
        loss_fn: `loss_fn(logits, targets)` for "taylor"; default cross-entropy.
        latency_probe: model -> {"latency_ms": ...}, run before pruning and after every step (required
            by a latency target); accuracy_probe: model -> {"val_accuracy": ...} likewise (optional).
    Returns:
        params/macs/channels before and after, the removed ratios, the steps run with each step's
        record ("step_records"), whether the target was met and the config.
    Raises:
        EdgecompressError: "taylor" without (or with empty) calibration batches; a latency target
            without a latency probe; a `ratios` prefix that names no layer.
    """
    taylor = config.importance == "taylor"
    if taylor and calibration_batches is None:
        raise EdgecompressError("prune.importance='taylor' needs calibration batches (gradients); none given")
    if taylor and iter(calibration_batches) is calibration_batches:
        calibration_batches = list(calibration_batches)
    if config.target.kind == "latency" and latency_probe is None:
        raise EdgecompressError("prune.target.kind='latency' needs a latency probe (the stage's timer); none given")
    loss_fn = loss_fn or F.cross_entropy
    probes = [p for p in (latency_probe, accuracy_probe) if p is not None]

    was_training = model.training
    try:
        model.eval()
        if ignored_layers is None:
            ignored_layers = _default_ignored(model, example_inputs)
        if config.ratio > 0 or config.ratios:
            records = _prune_steps(model, example_inputs, config, ignored_layers,
                                   (calibration_batches, loss_fn) if taylor else None, probes)
        else:
            records = [_record(0, model, example_inputs, probes)]
    finally:
        model.train(was_training)
    report = _summary(records, config)
    if config.round_to:  # layers narrower than round_to keep their width: the metrics say which
        report["not_multiple_of_round_to"] = {name: m.out_channels for name, m in model.named_modules()
                                              if isinstance(m, nn.Conv2d) and m.out_channels % config.round_to}
    return report


def _summary(records: list[dict[str, Any]], config: PruneConfig) -> dict[str, Any]:
    before, after = records[0], records[-1]

    def removed(key: str) -> float:
        return 1.0 - after[key] / before[key] if before[key] else 0.0

    report = {
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "channels_before": before["channels"], "channels_after": after["channels"],
        "channel_ratio_removed": removed("channels"),
        "param_ratio_removed": removed("params"),
        "mac_ratio_removed": removed("macs"),
        "steps": len(records) - 1,
        "step_records": records,
        "target_met": None if config.target.kind == "ratio" else _target_met(config.target, after, before),
        "config": config.config().to_dict(),
    }
    if report["target_met"] is False:
        log.warning("prune.target %s <= %s x unpruned not reached after %d steps (ratio %s): %s", config.target.kind,
                    config.target.value, report["steps"], config.ratio,
                    "raise prune.ratio or iterative_steps" if config.ratio < 0.9 else "the model cannot get there")
    log.info("pruned %s: params %d -> %d, MACs %d -> %d", config.importance, before["params"],
             after["params"], before["macs"], after["macs"])
    return report
