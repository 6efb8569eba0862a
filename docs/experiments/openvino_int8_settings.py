"""NNCF INT8 of OpenVINO models: calibration size, bias correction and preset (issue 15, items 1 and 4).

Evaluated on the zoo's 400 images of ../shared/data/imagenet-sample; the other 100 calibrate (the zoo
used 16 of them before this study). Run from the repo root:
    .venv/bin/python docs/experiments/openvino_int8_settings.py [model] [images]
Printed here (MobileNetV2, FP32 83.25%): images | bias correction | preset | top-1 | agreement
    16 fast performance 80.75 93.2 | 100 fast performance 82.75 93.8 | 100 full performance 81.00 93.8
    100 full mixed 82.50 94.5
"""
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from edgecompress.quantize.openvino import OpenVINOModel, convert_to_openvino, quantize_openvino
from edgecompress.zoo import imagenet, measure, weights

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
arch = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2"
root = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/imagenet-sample"
resolved = weights.resolve_weights([arch], None)[arch]
model = weights.load_pretrained(resolved)
subset = imagenet.imagenet_subset(root, imagenet.default_imagenet_classes())
images = imagenet.load_images(subset.paths, weights.preprocessing(resolved))
evaluated, targets, spare = images[:400], torch.tensor(subset.targets[:400]), images[400:]
reference = measure.predict_all(measure.inference_predict(model), evaluated, 50)
print(f"{arch} fp32 top-1 {(reference.argmax(1) == targets).float().mean():.4f}", flush=True)

configs = [  # (calibration images, fast bias correction, preset)
    (16, True, "performance"), (100, True, "performance"), (100, False, "performance"), (100, False, "mixed"),
]
with tempfile.TemporaryDirectory() as tmp:
    fp32 = Path(tmp) / "fp32.xml"
    convert_to_openvino(model, spare[:2], fp32)
    for count, fast, preset in configs:
        path = Path(tmp) / f"int8_{count}_{fast}_{preset}.xml"
        start = time.time()
        quantize_openvino(fp32, spare[:count], path, batch_size=25 if count % 25 == 0 else 16,
                          fast_bias_correction=fast, preset=preset)
        seconds = time.time() - start
        logits = measure.predict_all(OpenVINOModel(path, threads=2), evaluated, 50)
        top1 = float((logits.argmax(1) == targets).float().mean())
        print(f"| {count} | {'fast' if fast else 'full'} | {preset} | {100 * top1:.2f} | "
              f"{100 * measure.fidelity(reference, logits)['top1_agreement']:.1f} | {seconds:.0f} |", flush=True)
