"""Why FX INT8 of a pruned MobileNetV2 ran 8.6x slower than its eager FP32 (docs/results-cifar10-pretrained.md):
one quantized depthwise 3x3 conv (8 x C x 40 x 40, 1 thread, x86 engine) timed for channel counts around
the ones pruning leaves, plus MobileNetV2's training and inference speed at 128/160/224 (2 threads, batch
64), the figure behind that run's 160x160 choice. Run: .venv/bin/python docs/experiments/int8_depthwise_channels.py
"""

import time
import warnings

import torch
import torch.ao.nn.quantized as nnq
import torchvision

warnings.filterwarnings("ignore")


def depthwise_ms(channels: int, stride: int = 1, hw: int = 40) -> float:
    conv = nnq.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels)
    weight = torch.quantize_per_channel(torch.randn(channels, 1, 3, 3), torch.rand(channels) * 0.01 + 0.01,
                                        torch.zeros(channels, dtype=torch.long), 0, torch.qint8)
    conv.set_weight_bias(weight, torch.zeros(channels))
    conv.scale, conv.zero_point = 0.05, 64
    x = torch.quantize_per_tensor(torch.rand(8, channels, hw, hw), 0.01, 0, torch.quint8)
    for _ in range(3):
        conv(x)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.5:
        conv(x)
        calls += 1
    return (time.perf_counter() - start) / calls * 1000


def mobilenet_v2_images_per_s(size: int) -> tuple[float, float]:
    model = torchvision.models.get_model("mobilenet_v2", num_classes=10)
    x, y = torch.randn(64, 3, size, size), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for step in range(3):  # the first step warms up
        if step == 1:
            start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    train = 128 / (time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        model(x), model(x)
    return train, 128 / (time.perf_counter() - start)


def main() -> None:
    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(1)
    for channels in (80, 81, 88, 96, 97, 100, 104, 112, 113, 116, 120, 121, 122, 124, 126, 128, 144, 163, 168, 192):
        print(f"depthwise C={channels}: {depthwise_ms(channels):.3f} ms", flush=True)
    torch.set_num_threads(2)
    for size in (128, 160, 224):
        train, infer = mobilenet_v2_images_per_s(size)
        print(f"mobilenet_v2 {size}x{size}: train {train:.0f} images/s, eval {infer:.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
