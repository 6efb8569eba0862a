"""Model registry, checkpoint format and model statistics.

Architectures are chosen by name (`model.teacher.arch`, `model.student.arch`):
- CIFAR-style ResNets (`resnet20/32/44/56/110`, He et al. 2016, depth = 6n + 2) with a `width`
  multiplier on the 16/32/64 base channels; projection (1x1 conv + BN) shortcuts, so Torch-Pruning and
  FX quantization trace them without special cases. Sized for 32x32 inputs on a 2-core CPU.
- torchvision architectures (`resnet18`, `resnet50`, `mobilenet_v2`, ...) built without weights; with
  `small_input=True` the ImageNet stem is replaced by a 3x3 stride-1 conv and no max-pool, the usual
  adaptation for 32x32 images.
- any timm architecture as `timm:<name>` (no weights are downloaded).

A checkpoint is a dict of tensors and plain types (loads with `torch.load(weights_only=True)`):
`{"format", "arch": {name, num_classes, width, small_input}, "state_dict", "meta"}`. Pruned models keep
the same `arch`; their smaller layer widths are read back from the state dict's shapes
(`match_state_dict_shapes`), so no pickled code is ever needed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edgecompress import EdgecompressError
from edgecompress.config import Settings, check
from edgecompress.efficientnet_lite import LITE_WEIGHTS, LiteWeights
from edgecompress.io import file_size_mb, load_torch, save_torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edgecompress.checkpoint/1"


# ----------------------------------------------------------------------------------------------
# CIFAR ResNet
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        # A separate ReLU module after the add (not F.relu) so FX can fuse/observe it.
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3 stages of `n` basic blocks, 16/32/64 x width channels."""

    def __init__(self, depth: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# ----------------------------------------------------------------------------------------------
# Registry
@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture: `build(num_classes, width, small_input) -> nn.Module`."""

    build: Callable[[int, float, bool], nn.Module]
    family: str  # "cifar-resnet" | "torchvision" | "timm"


ARCHITECTURES: dict[str, ArchSpec] = {}


def register(name: str, family: str) -> Callable:
    """Decorator adding an architecture builder to `ARCHITECTURES` under `name`."""

    def wrap(build: Callable[[int, float, bool], nn.Module]) -> Callable:
        ARCHITECTURES[name] = ArchSpec(build=build, family=family)
        return build

    return wrap


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}", "cifar-resnet")(
        lambda num_classes, width, small_input, d=_depth: CifarResNet(d, num_classes, width)
    )


def _small_stem_resnet(model: nn.Module) -> nn.Module:
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _small_stem_first_conv(model: nn.Module) -> nn.Module:
    # MobileNet/EfficientNet: stride 2 in the first conv would shrink 32x32 inputs too early.
    first = model.features[0][0]
    first.stride = (1, 1)
    return model


def _torchvision(name: str, adapt: Callable[[nn.Module], nn.Module]) -> None:
    def build(num_classes: int, width: float, small_input: bool) -> nn.Module:
        import torchvision

        if width != 1.0:
            raise EdgecompressError(f"model width={width}: torchvision '{name}' supports width 1.0 only")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return adapt(model) if small_input else model

    register(name, "torchvision")(build)


TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")  # small_input swaps their 7x7 stem for a new 3x3 conv
for _name in TORCHVISION_RESNETS:
    _torchvision(_name, _small_stem_resnet)
for _name in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"):
    _torchvision(_name, _small_stem_first_conv)


def _efficientnet_lite(weights: LiteWeights) -> None:
    def build(num_classes: int, width: float, small_input: bool) -> nn.Module:
        # Width/depth are the variant's own; the TF stem is kept (its padding is fixed for the variant's
        # image size; other sizes run, with TF's padding only where the parity matches).
        if width != 1.0:
            raise EdgecompressError(f"model width={width}: {weights.arch} supports width 1.0 only")
        return weights.build(num_classes)

    register(weights.arch, "efficientnet-lite")(build)


for _lite in LITE_WEIGHTS:
    _efficientnet_lite(_lite)


def architecture_names() -> list[str]:
    """Names accepted by `build_model` (plus any `timm:<name>`)."""
    return sorted(ARCHITECTURES)


def is_known_architecture(name: str) -> bool:
    """True for registry names and `timm:<name>` (timm names are checked when building)."""
    return name in ARCHITECTURES or (name.startswith("timm:") and len(name) > 5)


def build_model(name: str, num_classes: int, width: float = 1.0, small_input: bool = True) -> nn.Module:
    """Build an untrained model by registry name.

    Args:
        name: a key of `ARCHITECTURES`, or `timm:<timm model name>`.
        num_classes: classifier outputs.
        width: channel multiplier (CIFAR ResNets; must be 1.0 for torchvision/timm models).
        small_input: adapt ImageNet stems to 32x32 inputs (torchvision models).
    Returns:
        The model, in train mode, on CPU.
    """
    if name.startswith("timm:"):
        import timm

        timm_name = name[5:]
        if timm_name not in timm.list_models():
            raise EdgecompressError(f"model arch='{name}': timm has no model '{timm_name}'")
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    if name not in ARCHITECTURES:
        raise EdgecompressError(
            f"model arch='{name}' is unknown; allowed: {', '.join(architecture_names())} or timm:<name>"
        )
    return ARCHITECTURES[name].build(num_classes, width, small_input)


RANDOM_INIT = "random"
PRETRAINED_INIT = "pretrained"
WEIGHTS_ALLOWED = "random, pretrained, or the path of a state dict or edgecompress checkpoint file"


@dataclass(frozen=True)
class ArchParams(Settings):
    """One network of the chain (`model.teacher`, `model.student`): registry name, width, where its
    first weights come from (`init_weights.initial_model`) and which of its parameters train."""

    arch: str = "resnet20"  # registry name (see README) or timm:<name>
    width: float = 1.0  # channel multiplier (CIFAR ResNets)
    weights: str = RANDOM_INIT  # random | pretrained (ImageNet, offline) | path of a state dict or checkpoint
    train_stages: tuple[str, ...] | None = None  # parameter-name prefixes that train; null = all

    def validate(self) -> None:
        check(is_known_architecture(self.arch), "arch", self.arch,
              f"allowed: {', '.join(architecture_names())} or timm:<name>")
        check(0 < self.width <= 8, "width", self.width, "must be a number in (0, 8]")
        if self.weights not in (RANDOM_INIT, PRETRAINED_INIT):
            check(Path(self.weights).is_file(), "weights", self.weights, f"file not found; allowed: {WEIGHTS_ALLOWED}")
        if self.weights == PRETRAINED_INIT:
            family = "timm" if self.arch.startswith("timm:") else ARCHITECTURES[self.arch].family
            check(family != "cifar-resnet", "weights", self.weights,
                  f"{self.arch} has no pretrained weights; pretrained needs a torchvision or timm:<name> arch")
            check(self.width == 1.0, "width", self.width, "pretrained weights need width 1.0")
        check(self.train_stages is None or len(self.train_stages) > 0, "train_stages", self.train_stages,
              "must be null (everything trains) or name at least one parameter prefix")


# ----------------------------------------------------------------------------------------------
# Checkpoints
def arch_config(name: str, num_classes: int, width: float, small_input: bool) -> dict[str, Any]:
    """The `arch` entry of a checkpoint: everything `build_model` needs."""
    return {"name": name, "num_classes": int(num_classes), "width": float(width), "small_input": bool(small_input)}


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict: every tensor's name, dtype, shape and bytes, in name order (the
    pickle around them may differ between torch versions; the weights may not)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, arch: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a model checkpoint atomically (state dict + arch + meta + the state dict's sha256, which
    `load_checkpoint` verifies; loads with weights_only)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_torch(path, {"format": CHECKPOINT_FORMAT, "arch": dict(arch), "state_dict": state, "meta": dict(meta),
                      "sha256": state_dict_sha256(state)})


def match_state_dict_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Resize Conv2d/BatchNorm2d/Linear layers of `model` to the shapes in `state_dict`.

    Structured pruning removes channels, so a pruned network is the original architecture with
    narrower layers; rebuilding it from the shapes keeps checkpoints free of pickled modules.
    Depthwise convs (groups == channels) keep groups == channels.
    """
    for name, module in list(model.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if key not in state_dict:
            continue
        shape = tuple(state_dict[key].shape)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) == shape:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = shape[0] if depthwise else module.groups
            new: nn.Module = nn.Conv2d(
                shape[1] * groups, shape[0], module.kernel_size, module.stride, module.padding,
                module.dilation, groups, module.bias is not None, module.padding_mode,
            )
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
        elif isinstance(module, nn.Linear):
            new = nn.Linear(shape[1], shape[0], module.bias is not None)
        else:
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
    return model


def _verify_hash(path: str | Path, ckpt: dict[str, Any]) -> None:
    """A checkpoint's weights must hash to what was written at save time: flipped bytes inside tensor data
    unpickle fine and would otherwise be used (issue 16: five teacher weights went from -0.03 to 35.0)."""
    recorded = ckpt.get("sha256")
    if recorded is None:
        log.warning("%s: no content hash (written before hashes were recorded): its weights are not verified", path)
        return
    if state_dict_sha256(ckpt["state_dict"]) != recorded:
        raise EdgecompressError(f"{path}: weights do not match the sha256 recorded when it was saved (the file is "
                                "corrupted or was edited); re-run the stage that produces it")


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by `save_checkpoint` (pruned ones included).

    Returns:
        (model in eval mode on CPU, the checkpoint dict without the state dict).
    Raises:
        EdgecompressError: naming the file when it is missing, corrupt, of another format, or its
            weights do not fit the architecture it names.
    """
    return model_from_checkpoint(load_torch(path), path)


def model_from_checkpoint(ckpt: Any, path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """`load_checkpoint` on a checkpoint already read from `path` (named in every error): its format and
    fields checked, its sha256 verified, the model rebuilt."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EdgecompressError(f"{path}: not an edgecompress checkpoint (expected format {CHECKPOINT_FORMAT})")
    missing = [k for k in ("arch", "state_dict") if not isinstance(ckpt.get(k), dict)]
    arch = ckpt.get("arch") or {}
    missing += [f"arch.{k}" for k in ("name", "num_classes", "width", "small_input") if not missing and k not in arch]
    if missing:
        raise EdgecompressError(f"{path}: checkpoint lacks {', '.join(missing)} (written by save_checkpoint? re-run "
                                "the stage that produces it)")
    _verify_hash(path, ckpt)
    model = build_model(arch["name"], arch["num_classes"], arch["width"], arch["small_input"])
    match_state_dict_shapes(model, ckpt["state_dict"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise EdgecompressError(f"{path}: weights do not match arch {arch['name']} ({first[:200]})") from None
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, info


# ----------------------------------------------------------------------------------------------
# Statistics
def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_layer_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on a single `input_size` (C, H, W) image, counted per
    layer by Torch-Pruning's op counter (conv, linear, BN; not functional ops such as attention's
    matmuls). The chain's `macs` metrics and pruning's MAC ratios use it, so a pruning ratio and the
    benchmark's MACs are counted alike; `zoo.measure.count_op_macs` counts every aten op instead (for
    transformers) and gives other numbers for the same network."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_size, device=next(model.parameters()).device)
    macs, _ = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs)


def model_stats(model: nn.Module, input_size: tuple[int, int, int], checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Params, MACs and (if given) checkpoint size in MB, for the metrics files."""
    stats: dict[str, Any] = {"params": count_params(model), "macs": count_layer_macs(model, input_size)}
    if checkpoint is not None:
        stats["size_mb"] = round(file_size_mb(checkpoint), 4)
    return stats
