"""Structured pruning of YOLO detectors (the `pruned` variant of detect_compress) and what it buys.

Torch-Pruning removes backbone/neck channels (L1 magnitude, per layer); the detection head's output
convolutions are kept, so boxes and classes keep their layout. ultralytics C2f / C3k2 blocks are made
split-free first (`SplitFreeC2f`); attention blocks are refused up front (`UNPRUNABLE_BLOCKS`).
`pruned_finetune` is the optional fine-tuning on the training split; `pruning_summary` turns the
variants' metrics rows into the "pruning" block of detect_compress's metrics: MACs removed and, per
runtime, the pruned network's model-block time against the original's (issue #17: removed MACs are
only worth something when they become milliseconds).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from edgecompress import EdgecompressError, first_line
from edgecompress.detection.models import Detector, RawHead, fuse_network, unfused_network
from edgecompress.detection.source import load_subset
from edgecompress.detection.train import fit_detector
from edgecompress.prune import PruneConfig, prune_model

log = logging.getLogger(__name__)

Built = tuple[Detector | None, dict[str, Any]]  # a variant and its record (None and {"skipped": why})

# (original variant, its pruned counterpart): the same runtime with and without pruning
RUNTIME_PAIRS = (("fp32", "pruned"), ("onnx_fp32", "pruned_onnx_fp32"), ("openvino_fp32", "pruned_openvino_fp32"),
                 ("openvino_int8", "pruned_openvino_int8"))
FP32_RUNTIMES = ("fp32", "onnx_fp32", "openvino_fp32")  # originals whose fastest sets the FP32 bar
MAC_FIELDS = ("params_before", "params_after", "macs_before", "macs_after", "mac_ratio_removed",
              "param_ratio_removed")


def head_output_convs(model: nn.Module) -> list[nn.Module]:
    """The convolutions whose outputs are the detection head's predictions (kept whole by pruning)."""
    head = list(model.modules())
    detect_heads = [m for m in head if type(m).__name__ in ("Detect", "Segment", "Pose", "OBB", "v10Detect")]
    if not detect_heads:
        raise EdgecompressError("pruning: no YOLO Detect head found in the model (only YOLO families are pruned)")
    return [m for h in detect_heads for m in h.modules() if isinstance(m, nn.Conv2d)]


def _conv_slice(conv_block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an ultralytics Conv (conv + BatchNorm + activation) keeping output channels start:stop."""
    part = copy.deepcopy(conv_block)
    conv, norm = part.conv, part.bn
    conv.weight = nn.Parameter(conv.weight.detach()[start:stop].clone())
    conv.out_channels = stop - start
    norm.weight = nn.Parameter(norm.weight.detach()[start:stop].clone())
    norm.bias = nn.Parameter(norm.bias.detach()[start:stop].clone())
    norm.running_mean = norm.running_mean[start:stop].clone()
    norm.running_var = norm.running_var[start:stop].clone()
    norm.num_features = stop - start
    return part


class SplitFreeC2f(nn.Module):
    """ultralytics' C2f (and C3k2) block with its first 1x1 convolution cut in two (`cv0`, `cv1`) instead
    of one convolution whose output is `chunk`ed: the same function and weights, in a form Torch-Pruning
    can prune (its dependency graph does not follow channels through a chunk of a pruned layer)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.c = block.c
        self.cv0, self.cv1 = _conv_slice(block.cv1, 0, block.c), _conv_slice(block.cv1, block.c, 2 * block.c)
        self.cv2, self.m = block.cv2, block.m
        for attr in ("f", "i", "type", "np"):  # what ultralytics' model loop reads of each layer
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def split_free_c2f(model: nn.Module) -> int:
    """Replace every C2f / C3k2 block of an ultralytics model by `SplitFreeC2f`, in place; returns how many."""
    try:
        from ultralytics.nn.modules.block import C2f
    except ImportError:
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f) and hasattr(child.cv1, "bn"):
                setattr(parent, name, SplitFreeC2f(child))
                count += 1
    return count


# ultralytics attention blocks (yolo11's C2PSA, yolo12's A2C2f): building Torch-Pruning's dependency
# graph of yolo11n exhausted an 8 GB memory limit after 80 s, so they are refused up front
UNPRUNABLE_BLOCKS = ("C2PSA", "PSA", "A2C2f", "AAttn", "Attention")


def pruned_variant(detector: Detector, ratio: float, example: torch.Tensor,
                   finetune: Callable[[Detector], dict[str, Any]] | None = None, *,
                   round_to: int | None = None) -> Built:
    """Backbone/neck channels removed with Torch-Pruning (L1 magnitude, per layer); every convolution
    of the detection head is ignored, so its outputs keep their layout.

    `round_to` is Torch-Pruning's: the number of channels each pruned group keeps is rounded down to a
    multiple of it (SIMD-friendly widths), and a group that would be emptied is left unpruned; None =
    exactly `int(n * (1 - ratio))` kept.

    `finetune(pruned detector)` (e.g. `pruned_finetune`'s fit on the training split) runs on the
    pruned network while it still has its BatchNorm layers; what it returns is recorded under
    "finetune". Without it the accuracy pruning alone costs is the number reported.

    ultralytics C2f / C3k2 blocks are first rewritten split-free (`SplitFreeC2f`, same function). An
    architecture Torch-Pruning cannot handle (attention blocks, `UNPRUNABLE_BLOCKS`, refused up front;
    any other failure of its graph) is returned as skipped with the reason.
    """
    blocks = sorted({type(m).__name__ for m in detector.model.modules()} & set(UNPRUNABLE_BLOCKS))
    if blocks:
        return None, {"skipped": f"Torch-Pruning is not run on {detector.arch}: its attention blocks "
                                 f"({', '.join(blocks)}) are not supported (the dependency graph of yolo11n "
                                 "exhausted 8 GB of memory)"}
    # Fused families (YOLOv5) are pruned unfused so the BatchNorm layers go with their channels
    # (measured on yolov5n: 5% of channels cost 0.72 -> 0.11 mAP@.5 unfused, -> 0.0002 fused)
    fused = detector.facts.fused
    model = unfused_network(detector)
    rewritten = 0 if fused else split_free_c2f(model)
    try:
        report = prune_model(RawHead(model), example[:1].cpu(),
                             PruneConfig(ratio=ratio, importance="l1", round_to=round_to),
                             ignored_layers=head_output_convs(model))
    except EdgecompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch-pruning raises many types on unsupported graphs
        return None, {"skipped": f"Torch-Pruning could not prune {detector.arch} "
                                 f"({type(exc).__name__}: {first_line(exc, 160)})"}
    variant = replace(detector, model=model.to(detector.device).eval())
    tuned = finetune(variant) if finetune is not None else None
    if fused:
        variant = replace(variant, model=fuse_network(variant.model))
    how = (f"fine-tuned {tuned['epochs']} epochs on {tuned['images']} images"
           + (f" at lr {tuned['lr']:g}" if tuned.get("lr") else "") if tuned else "no fine-tuning")
    how += f"; {rewritten} C2f blocks made split-free first" if rewritten else ""
    rounding = f"round_to {round_to}" if round_to else "round_to null (exact channel counts)"
    return variant, {"method": f"Torch-Pruning L1, ratio {ratio} per layer, {rounding}, head kept, {how}",
                     "ratio": ratio, "round_to": round_to, **{k: report[k] for k in MAC_FIELDS}, "finetune": tuned}


def pruned_finetune(train_dir: str | Path, *, epochs: int, settings: dict[str, Any], seed: int,
                    evaluate: Callable[[Detector], dict[str, Any]],
                    lr: float | None = None) -> Callable[[Detector], dict[str, Any]] | None:
    """The pruned network's fine-tuning for `pruned_variant`: `epochs` with detection.train's optimizer
    settings (`settings`, `train.loop_settings`) on the training split in `train_dir`, at learning rate
    `lr` (None = the one of `settings`), its subset mAP (`evaluate`) recorded before and after each
    epoch; None for 0 epochs or an empty split."""
    if epochs == 0:
        return None
    train = load_subset(train_dir)
    if not train.images:
        log.warning("pruned variant not fine-tuned: the training split is empty (every source image is evaluated)")
        return None
    # BatchNorm statistics are re-estimated: pruning changed every activation they describe
    hyper = {**settings, "epochs": epochs, "freeze_batchnorm": False, **({"lr": lr} if lr is not None else {})}

    def finetune(pruned: Detector) -> dict[str, Any]:
        before = evaluate(pruned)  # what pruning alone left
        result = fit_detector(pruned, train, seed=seed, desc="pruned", evaluate=evaluate, **hyper)
        return {**result, "lr": hyper["lr"], "before": {"map": before["map"], "map_50": before["map_50"]}}
    return finetune


def model_ms(row: Mapping[str, Any] | None) -> float | None:
    """The model-block ms/image of a measured variant's metrics row (None: absent or skipped)."""
    if not row or "timing" not in row:
        return None
    return row["timing"]["blocks"]["model"]["per_image_ms"]


def fastest(variants: Mapping[str, Mapping[str, Any]], names: tuple[str, ...]) -> tuple[str, float] | None:
    """(name, model-block ms/image) of the fastest measured variant among `names`; None when none was."""
    times = {name: ms for name in names if (ms := model_ms(variants.get(name))) is not None}
    return min(times.items(), key=lambda item: item[1]) if times else None


def pruning_summary(variants: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The "pruning" block of detect_compress's metrics, from its variants' rows: MACs removed (the
    pruned record's macs_before/macs_after), and for each runtime measured both ways (`RUNTIME_PAIRS`,
    keyed by the original's variant) the model-block ms/image of each, the speedup (original / pruned),
    the latency reduction (1 - pruned / original) and the realised fraction (latency reduction / MAC
    reduction: 1 = every removed MAC became time). "best_fp32": the fastest FP32 runtime of the original
    against the fastest of the pruned network. "never_slower": pruned no slower on any pair measured
    (None when none was). None when no pruned variant carries MAC counts (skipped or not built)."""
    record = next((variants[name] for _, name in RUNTIME_PAIRS if "macs_before" in variants.get(name, {})), None)
    if record is None:
        return None
    before, after = record["macs_before"], record["macs_after"]
    mac_reduction = 1 - after / before if before else 0.0
    runtimes = {}
    for original, pruned in RUNTIME_PAIRS:
        original_ms, pruned_ms = model_ms(variants.get(original)), model_ms(variants.get(pruned))
        if original_ms is None or pruned_ms is None:
            continue
        reduction = 1 - pruned_ms / original_ms
        runtimes[original] = {"pruned_variant": pruned, "original_ms": original_ms, "pruned_ms": pruned_ms,
                              "speedup": round(original_ms / pruned_ms, 4), "latency_reduction": round(reduction, 4),
                              "realised_fraction": round(reduction / mac_reduction, 4) if mac_reduction > 0 else None}
    best_fp32 = None
    best_original, best_pruned = fastest(variants, FP32_RUNTIMES), fastest(variants, tuple(
        pruned for original, pruned in RUNTIME_PAIRS if original in FP32_RUNTIMES))
    if best_original and best_pruned:
        best_fp32 = {"original": best_original[0], "original_ms": best_original[1], "pruned": best_pruned[0],
                     "pruned_ms": best_pruned[1], "speedup": round(best_original[1] / best_pruned[1], 4)}
    return {"ratio": record.get("ratio"), "round_to": record.get("round_to"), "macs_before": before,
            "macs_after": after, "mac_reduction": round(mac_reduction, 4), "runtimes": runtimes, "best_fp32": best_fp32,
            "never_slower": all(r["pruned_ms"] <= r["original_ms"] for r in runtimes.values()) if runtimes else None}
