"""NNCF INT8 of OpenVINO models: calibration size, bias correction and preset (issue 15, items 1 and 4).

Evaluated on the zoo's 400 images of ../shared/data/imagenet-sample; the other 100 calibrate (the zoo
used 16 of them before this study). Run from the repo root:
    .venv/bin/python docs/experiments/openvino_int8_settings.py [model] [images]
Printed here (MobileNetV2, FP32 83.25%): images | bias correction | preset | top-1 | agreement
    16 fast performance 80.75 93.2 | 100 fast performance 82.75 93.8 | 100 full performance 81.00 93.8
    100 full mixed 82.50 94.5
"""
import tempfile
import time
from pathlib import Path


from edgecompress.quantize.openvino import OpenVINOModel, convert_to_openvino, quantize_openvino
from edgecompress.zoo import measure

from zoo_sample import arch, evaluated, model, reference, spare, targets  # noqa: E402

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
