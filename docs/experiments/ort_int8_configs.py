"""ONNX Runtime static INT8 configurations, one knob at a time (issue 15, item 3): QDQ vs QOperator,
unsigned vs signed activations, reduce_range, per-channel vs per-tensor weights, calibration method,
quant_pre_process, and the session's graph optimisation level.

Evaluated on the zoo's 400 images of ../shared/data/imagenet-sample; the other 100 calibrate. Latency
with the benchmark's timer (`bench.timing.latency_sweep`), 2 threads, ms/image at batch 1 and 8.
Run from the repo root on a quiet machine:
    .venv/bin/python docs/experiments/ort_int8_configs.py [model] [images]
The MobileNetV2 table it printed is in the README (zoo section); EfficientNet-Lite0 (FP32 87.75%): every
config 87.75% except s8 activations 88.00%, reduce_range 87.25% and per-tensor weights 82.50%.
"""
import tempfile
import time
from pathlib import Path


from edgecompress.bench.timing import latency_sweep
from edgecompress.quantize.onnx import OnnxModel, export_onnx, quantize_onnx_static
from edgecompress.zoo import measure

from zoo_sample import arch, evaluated, model, reference, spare, targets  # noqa: E402


spare_reference = measure.predict_all(measure.inference_predict(model), spare, 50).argmax(1)


def report(label: str, predict, seconds: float = 0.0) -> None:
    """The deciding figure is the agreement on the calibration images (the only ones a choice may use);
    the evaluated images' top-1 and agreement are for the README table."""
    decided = float((measure.predict_all(predict, spare, 50).argmax(1) == spare_reference).float().mean())
    logits = measure.predict_all(predict, evaluated, 50)
    top1 = float((logits.argmax(1) == targets).float().mean())
    ms = latency_sweep(predict, evaluated[:8], batch_sizes=(1, 8), warmup=3, repeats=5, min_time_s=1.0)["latency_ms"]
    agree = measure.fidelity(reference, logits)["top1_agreement"]
    print(f"| {label} | {100 * decided:.0f} | {100 * top1:.2f} | {100 * agree:.1f} | {ms['1']['median']:.3f} | {ms['8']['median']:.3f} |"
          f" {seconds:.0f} |", flush=True)


configs = {  # label: quantize_onnx_static keywords (the first is the shipped default before this study)
    "QDQ, u8 act, per-channel, MinMax, pre-processed": {},
    "QOperator": {"quant_format": "qoperator"},
    "s8 activations (S8S8)": {"activations": "int8"},
    "reduce_range": {"reduce_range": True},
    "per-tensor weights": {"per_channel": False},
    "Percentile calibration": {"calibration": "percentile"},
    "Entropy calibration": {"calibration": "entropy"},
    "no quant_pre_process": {"pre_process": False},
}
print(f"{arch}: | config | calibration-set agreement % | top-1 % | agreement % | ms/img b1 | ms/img b8 | quantize s |")
with tempfile.TemporaryDirectory() as tmp:
    fp32 = Path(tmp) / "fp32.onnx"
    export_onnx(model, spare[:2], fp32)
    report("FP32 (ORT)", OnnxModel(fp32, threads=2))
    for label, options in configs.items():
        path = Path(tmp) / f"{len(label)}.onnx"
        start = time.time()
        quantize_onnx_static(fp32, path, spare, batch_size=25, **options)
        report(label, OnnxModel(path, threads=2), time.time() - start)
