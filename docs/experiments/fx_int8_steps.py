"""Why FX INT8 loses points on MobileNetV2 here, and what each fix buys (issue 15, item 2).

Evaluated on the zoo's 400 images of ../shared/data/imagenet-sample (one per class first); the other
100 calibrate (never evaluated). Every config is x86-engine FX static INT8 through
`edgecompress.quantize.fx.quantize_static_fx`, one knob changed at a time. Run from the repo root:
    .venv/bin/python docs/experiments/fx_int8_steps.py [model] [images] [fallback|cle]
(the float-fallback search, ~8 min, runs only with the third argument "fallback"; "cle" runs only the
cross-layer equalization / bias correction rows)
Printed here (2-core AMD EPYC; FP32 top-1 83.25%): top-1 / agreement with FP32 / logit SQNR
    default x86 mapping, 16 images  74.50%  80.0%   8.2 dB    | 100 images  74.25%  79.8%  7.0 dB
    custom                          80.50%  88.3%  10.7 dB    | vnni        79.00%  88.8% 10.9 dB
    default + ReLU6 split           77.75%  86.3%   9.5 dB    | custom + split 81.00% 91.3% 12.3 dB
    vnni + split                    80.75%  92.0%  12.6 dB
    custom + split + fallback (1 layer)  81.00% 92.8% 15.1 dB | vnni + split + fallback (3 layers) 82.25% 94.0% 15.8 dB
Cross-layer equalization (CLE) and bias correction (BC), Nagel et al. 2019 (agreement on the 100
calibration images in brackets: what the choices were made on; vnni + split there: [92%]):
    FP32, ReLU6 -> ReLU between paired convs 83.00% 97.75% 25.0 dB [98%] | FP32 CLE, ReLU6 kept 12.50% [21%]
    FP32, CLE + bias absorption (BA)         84.00% 97.5%  21.8 dB [98%]
    vnni + split + CLE        81.75% 90.0%  10.2 dB [85%] | + CLE + BA        79.75% 88.25% 10.1 dB [90%]
    vnni + split + BC         82.25% 94.0%  12.7 dB [93%] | + CLE + BC        80.50% 92.0%  13.6 dB [90%]
    vnni + split + CLE+BA+BC  82.25% 93.5%  13.5 dB [95%]
    custom + split + CLE      80.75% 89.0%   9.6 dB [87%] | + CLE + BA        82.00% 90.0%   9.7 dB [90%]
    custom + split + BC       82.50% 94.25% 13.2 dB [93%] | + CLE + BC        81.25% 91.25% 13.4 dB [92%]
    custom + split + CLE+BA+BC 81.75% 93.5% 13.1 dB [91%]
"""
import sys
import time

import torch

from edgecompress.quantize import fx
from edgecompress.zoo import measure

from zoo_sample import arch, evaluated, model, reference, spare, targets  # noqa: E402

steps = [  # (label, qconfig, calibration images)
    ("torch default x86 mapping, 16 calibration images (the zoo's setting)", "default", 16),
    ("torch default x86 mapping, 100 calibration images", "default", 100),
    ("activations 8-bit histogram, weights 7-bit (custom)", "custom", 100),
    ("activations 8-bit histogram, weights 8-bit, depthwise 7-bit (vnni)", "vnni", 100),
    ("default, ReLU6 split into ReLU + clamp (conv output observed after the ReLU)", "default+split", 100),
    ("custom, ReLU6 split into ReLU + clamp", "custom+split", 100),
    ("vnni, ReLU6 split into ReLU + clamp", "vnni+split", 100),
]
for label, qconfig, count in steps if sys.argv[3:] != ["cle"] else []:
    start = time.time()
    qconfig, _, rewrite = qconfig.partition("+")
    quantized = fx.quantize_static_fx(model, spare[:count], backend="x86", qconfig=qconfig, batch_size=25,
                                      split_relu6_first=rewrite == "split")
    with fx.quant_engine("x86"):
        logits = measure.predict_all(measure.inference_predict(quantized), evaluated, 50)
    top1 = float((logits.argmax(1) == targets).float().mean())
    print(f"{label}: top-1 {top1:.4f} {measure.fidelity(reference, logits)} ({time.time() - start:.0f} s)", flush=True)


# Cross-layer equalization and bias correction (Nagel et al. 2019; quantize.equalize, quantize.bias_correction).
from edgecompress.quantize import equalize  # noqa: E402


def report(label, predict, start):
    logits = measure.predict_all(predict, evaluated, 50)
    top1 = float((logits.argmax(1) == targets).float().mean())
    print(f"{label}: top-1 {top1:.4f} {measure.fidelity(reference, logits)} ({time.time() - start:.0f} s)", flush=True)


def spare_fidelity(predict):
    return measure.fidelity(spare_logits, measure.predict_all(predict, spare, 50))


spare_logits = measure.predict_all(measure.inference_predict(model), spare, 50)
# The float function CLE changes: ReLU6 -> ReLU between paired convs ("relu", the paper's choice), or the
# ReLU6 kept after rescaling ("clamp": channel i clipped at 6 * s_i); bias absorption (only into unpadded
# convs) is exact only where a channel stays above its BN's beta - 3 gamma. Each alone, without quantization.
relu_only = equalize.replace_relu6(model, equalize.plan_equalization(model).relu6_between)
equalized = {mode: equalize.cross_layer_equalize(model, relu6=mode) for mode in ("relu", "clamp")}
equalized["relu+absorb"] = equalize.cross_layer_equalize(model, relu6="relu", bias_absorption=True)
for label, variant in (("FP32, ReLU6 -> ReLU between paired convs, no rescaling", relu_only),
                       ("FP32, CLE relu6=relu (function = the row above)", equalized["relu"]),
                       ("FP32, CLE relu6=clamp (ReLU6 kept after rescaling)", equalized["clamp"]),
                       ("FP32, CLE relu6=relu + bias absorption", equalized["relu+absorb"])):
    start = time.time()
    report(label, measure.inference_predict(variant), start)
    print(f"  same on the calibration images: {spare_fidelity(measure.inference_predict(variant))}")

# Choices on the 100 calibration images only: vnni INT8 agreement with FP32 there (then SQNR).
choice = {}
for mode, variant in [("none", model), *equalized.items()]:
    quantized = fx.quantize_static_fx(variant, spare, backend="x86", qconfig="vnni", batch_size=25)
    with fx.quant_engine("x86"):
        choice[mode] = spare_fidelity(measure.inference_predict(quantized))
    print(f"  vnni + CLE {mode} on the calibration images: {choice[mode]}", flush=True)
for qconfig in ("vnni", "custom"):
    for cle, bias in (("relu", False), ("relu+absorb", False), (None, True), ("relu", True), ("relu+absorb", True)):
        start = time.time()
        quantized = fx.quantize_static_fx(equalized[cle] if cle else model, spare, backend="x86", qconfig=qconfig,
                                          batch_size=25, bias_correction=bias)
        with fx.quant_engine("x86"):
            report(f"{qconfig} + split{f' + CLE ({cle})' if cle else ''}{' + bias correction' if bias else ''}",
                   measure.inference_predict(quantized), start)
            print(f"  same on the calibration images: {spare_fidelity(measure.inference_predict(quantized))}")

# Per-layer float fallback, decided on the 100 calibration images only (top-1 agreement with FP32 there),
# then reported on the 400 evaluated ones.
from edgecompress.quantize.fallback import float_fallback  # noqa: E402

if sys.argv[3:] != ["fallback"]:
    sys.exit(0)
spare_reference = measure.predict_all(measure.inference_predict(model), spare, 50).argmax(1)
layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
for qconfig in ("custom", "vnni"):
    def build(float_layers, qconfig=qconfig):
        return fx.quantize_static_fx(model, spare, backend="x86", qconfig=qconfig, batch_size=25,
                                     float_layers=float_layers)

    def agreement(quantized):
        with fx.quant_engine("x86"):
            return float((measure.predict_all(measure.inference_predict(quantized), spare, 50).argmax(1)
                          == spare_reference).float().mean())

    found, quantized = float_fallback(build, agreement, layers, target=0.97, max_layers=4)
    with fx.quant_engine("x86"):
        logits = measure.predict_all(measure.inference_predict(quantized), evaluated, 50)
    top1 = float((logits.argmax(1) == targets).float().mean())
    print(f"{qconfig} + split + float fallback {found.float_layers} (calibration-set agreement "
          f"{found.baseline:.2f} -> {found.score:.2f}, {found.seconds:.0f} s): top-1 {top1:.4f} "
          f"{measure.fidelity(reference, logits)}", flush=True)
