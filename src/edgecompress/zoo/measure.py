"""How a zoo model is measured: top-1/top-5 with the exact interval of top-1, fidelity of a quantized
model to its FP32 original, MACs, size and latency per batch size (stage zoo_benchmark), and the
dynamic and FX static INT8 analyses (stage zoo_quantize) with the chain's quantization backend
(`quantize.fx`) and timer (`bench.timing`); every batch size's timing watches the machine's load
(`bench.contention`: the `zoo.max_load` / `retries` / `wait_s` params), as the chain's benchmark does."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import first_line
from edgecompress.bench.contention import LoadPolicy, watched
from edgecompress.bench.timing import latency_sweep
from edgecompress.models import count_params
from edgecompress.quantize.common import BackendUnsupported
from edgecompress.quantize.fx import (layer_summary, linear_layers_called, quant_engine, quantize_dynamic_linear,
                                      quantize_static_fx)
from edgecompress.zoo.imagenet import (Subset, default_imagenet_classes, describe_preprocessing,
                                       evaluation_and_calibration, imagenet_subset, load_imagenet_classes)
from edgecompress.zoo.params import ZooParams
from edgecompress.weights import ResolvedWeights, load_pretrained, preprocessing, published_accuracy, resolve_models

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Accuracy and fidelity
def topk_accuracy(predict: Any, images: torch.Tensor, targets: tuple[int, ...] | torch.Tensor, *,
                  batch_size: int = 25, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (fractions) of `predict` (images -> logits) on preprocessed images."""
    return topk_from_logits(predict_all(predict, images, batch_size), targets, ks)


def topk_from_logits(logits: torch.Tensor, targets: tuple[int, ...] | torch.Tensor,
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (fractions) of logits, counted by torchmetrics as in `train.evaluate`."""
    from torchmetrics.classification import MulticlassAccuracy

    targets = torch.as_tensor(targets)
    return {f"top{k}": round(float(MulticlassAccuracy(num_classes=logits.shape[1], top_k=k, average="micro")(
        logits, targets)), 6) for k in ks}  # float32 fraction: 0.82, not 0.8199999


def predict_all(predict: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of every image, in batches."""
    with torch.inference_mode():
        return torch.cat([predict(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])


def fidelity(reference: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """How closely a quantized model follows its FP32 original on the same images: top-1 agreement
    (share of equal predicted classes) and the logits' signal-to-quantization-noise ratio in dB."""
    noise = (reference - logits).norm()
    sqnr = float("inf") if noise == 0 else float(20 * torch.log10(reference.norm() / noise))
    return {"top1_agreement": round(float((reference.argmax(1) == logits.argmax(1)).float().mean()), 6),
            "sqnr_db": round(sqnr, 2)}


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> list[float]:
    """Clopper-Pearson (exact binomial) interval of an accuracy measured on `total` images: with one
    image per class the band is wide, and a published figure is judged against it."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="exact")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


# ----------------------------------------------------------------------------------------------
# Cost
def count_op_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image, from torch's FLOP counter
    (`FlopCounterMode`: every aten matmul/conv/attention op, FLOPs / 2).

    Unlike `models.count_layer_macs` (Torch-Pruning's counter: hooks on modules such as conv, linear,
    BatchNorm, activations and pooling, blind to functional ops), this one sees every matmul and
    convolution however it is called, so transformers' attention products (ViT, Swin) count, while
    BatchNorm and other elementwise work do not: the two give different numbers for the same network.
    The zoo's `macs` metrics use this counter; the chain's `macs` and pruning ratios the per-layer one.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *input_size))
    return int(counter.get_total_flops() // 2)


def state_dict_mb(model: nn.Module) -> float:
    """Serialized size of the model's state dict (MB): what a weights file of it takes on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return round(buffer.tell() / 1e6, 4)


# ----------------------------------------------------------------------------------------------
# One measurement: accuracy and latency on the same images
def inference_predict(model: nn.Module) -> Any:
    """`model` as images -> logits under inference mode (the callable every measurement times)."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return predict


@dataclass(frozen=True)
class Measurement:
    """How a zoo model is measured: evaluation batch, the latency sweep's settings and the load policy
    its timings are watched under (the default watches nothing)."""

    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    warmup: int = 1
    repeats: int = 3
    min_time_s: float = 0.0
    eval_batch_size: int = 25
    load: LoadPolicy = field(default_factory=LoadPolicy)

    @classmethod
    def from_params(cls, params: ZooParams) -> "Measurement":
        """The latency/evaluation settings of the `zoo` params block."""
        return cls(batch_sizes=params.batch_sizes, warmup=params.warmup, repeats=params.repeats,
                   min_time_s=params.min_time_s, eval_batch_size=params.eval_batch_size,
                   load=LoadPolicy.of(params))


def latency_at_batch_sizes(predict: Any, images: torch.Tensor, how: Measurement,
                           batch_sizes: tuple[int, ...] | None = None, label: str = "latency") -> dict[str, Any]:
    """`latency_sweep` one batch size at a time, each timing watched under `how.load` (`contention.watched`):
    a batch size timed while other processes took the CPU is timed again, not the whole sweep. When
    monitored, "load" holds each batch size's record ({"<b>": {..., "contended", "attempts"}})."""
    out: dict[str, Any] = {}
    loads: dict[str, dict[str, Any]] = {}
    for b in batch_sizes or how.batch_sizes:
        sweep, load = watched(partial(latency_sweep, predict, images, batch_sizes=(b,), warmup=how.warmup,
                                      repeats=how.repeats, min_time_s=how.min_time_s), how.load, f"{label} b{b}")
        for key, per_batch in sweep.items():
            out.setdefault(key, {}).update(per_batch)
        if load is not None:
            loads[str(b)] = load
    return {**out, "load": loads} if loads else out


def measure(predict: Any, images: torch.Tensor, targets: tuple[int, ...], how: Measurement,
            batch_sizes: tuple[int, ...] | None = None, reference: torch.Tensor | None = None,
            label: str = "latency") -> dict[str, Any]:
    """Top-1/top-5 with the exact interval of top-1, and latency per batch size (median/IQR per image
    and per call, throughput) with the chain's timer, on the same real images. With `reference` (the
    FP32 model's logits) also the `fidelity` of these logits to it, from the same forward pass. `label`
    names the measurement in the contention warning."""
    logits = predict_all(predict, images, how.eval_batch_size)
    accuracy = topk_from_logits(logits, targets)
    correct = round(accuracy["top1"] * len(targets))
    result = {**accuracy, "top1_interval95": accuracy_interval(correct, len(targets))}
    if reference is not None:
        result.update(fidelity(reference, logits))
    return {**result, **latency_at_batch_sizes(predict, images, how, batch_sizes, label)}


def benchmark_model(resolved: ResolvedWeights, images: torch.Tensor, targets: tuple[int, ...],
                    how: Measurement) -> dict[str, Any]:
    """One pretrained FP32 model on preprocessed subset images: accuracy (with published figures
    beside it), params, MACs (`count_op_macs`), weights file size and latency per batch size."""
    model = load_pretrained(resolved)
    published = published_accuracy(resolved)
    result = measure(inference_predict(model), images, targets, how, label=resolved.arch)
    if published and published.get("top1") is not None:
        low, high = result["top1_interval95"]
        result["published_in_interval"] = low * 100 <= published["top1"] <= high * 100
        result["top1_minus_published_points"] = round(result["top1"] * 100 - published["top1"], 2)
    return {"arch": resolved.arch, "weights": resolved.label, "random_weights": resolved.version is None,
            "weights_file": str(resolved.path) if resolved.path else None, "images": len(targets),
            "classes": len(set(targets)), "published": published, "params": count_params(model),
            "macs": count_op_macs(model, tuple(images.shape[1:])),
            "size_mb": state_dict_mb(model), "preprocessing": describe_preprocessing(preprocessing(resolved)),
            **result}


# ----------------------------------------------------------------------------------------------
# Quantization analysis (methods from edgecompress.quantize, the chain's one quantization backend)
DYNAMIC_NOTE = ("PyTorch dynamic quantization converts only nn.Linear (and RNN) layers; Conv2d has no dynamic "
                "INT8 kernel and stays float32, so CNNs barely change (only their classifier) while "
                "transformers (ViT/Swin: Linear-heavy) do")


def fp32_latency(model: nn.Module, images: torch.Tensor, how: Measurement) -> dict[str, Any]:
    """The FP32 model's latency sweep, measured in the quantization stage itself right before its
    quantized versions: on a shared machine, timings taken minutes apart in another stage differ by
    more than dynamic quantization changes a CNN."""
    return latency_at_batch_sizes(inference_predict(model), images, how, label="eager")


def failure(exc: Exception, what: str) -> dict[str, str]:
    first = first_line(exc, 240)
    log.warning("%s: skipped (%s: %s)", what, type(exc).__name__, first)
    return {"skipped": f"{what} failed ({type(exc).__name__}: {first})"}


def dynamic_analysis(model: nn.Module, images: torch.Tensor, targets: tuple[int, ...],
                     how: Measurement) -> dict[str, Any]:
    """Dynamic INT8 (Linear layers) of `model`: layers quantized vs float, size, accuracy, latency per
    batch size. Linear layers the forward uses only through their weights (Swin's attention `qkv` and
    `proj`, nn.MultiheadAttention's `out_proj`) stay float and are counted as float; if the quantized
    model still fails to run, the result is {"skipped": reason}."""
    quantized = quantize_dynamic_linear(model, images[:1])
    try:
        with quant_engine(quantized.quant_engine):
            result = measure(inference_predict(quantized), images, targets, how, label="dynamic")
    except Exception as exc:  # noqa: BLE001 - the model's own forward rejects the quantized module
        return failure(exc, "running the dynamically quantized model")
    return {"layers": layer_summary(quantized), "size_mb": state_dict_mb(quantized), "note": DYNAMIC_NOTE, **result}


def static_analysis(model: nn.Module, images: torch.Tensor, targets: tuple[int, ...], calibration: torch.Tensor,
                    how: Measurement, *, configs: tuple[str, ...], calibration_batch_size: int,
                    batch_size: int, bias_correction: bool = False) -> dict[str, dict[str, Any]]:
    """FX graph-mode static INT8 per engine (`x86`, `fbgemm`, `qnnpack`: torch's default QConfig mapping
    for it), `custom` (`quantize.fx.custom_qconfig` on x86) and `vnni` (`quantize.fx.vnni_qconfig_mapping`
    on x86), calibrated on `calibration` images, each convolution's bias corrected on them with
    `bias_correction` (`quantize.bias_correction`); latency at `batch_size`. An engine missing from this torch build, or a model FX cannot trace, is
    recorded as {"skipped": reason} and the others go on."""
    results: dict[str, dict[str, Any]] = {}
    reference = predict_all(inference_predict(model), images, how.eval_batch_size)
    # Linear layers the forward only reads the weights of (Swin's attention) are inside a traced leaf
    # function and stay float; the converted graph has no module left to count for them.
    weight_read = len(linear_layers_called(model, images[:1])[1])
    for name in configs:
        backend, qconfig = ("x86", name) if name in ("custom", "vnni") else (name, "default")
        try:
            quantized = quantize_static_fx(model, calibration, backend=backend, qconfig=qconfig,
                                           batch_size=calibration_batch_size, bias_correction=bias_correction)
        except BackendUnsupported as exc:
            results[name] = {"skipped": str(exc)}
            continue
        except Exception as exc:  # noqa: BLE001 - symbolic tracing fails on data-dependent control flow
            results[name] = failure(exc, f"FX graph-mode static quantization ({name})")
            continue
        try:
            with quant_engine(backend):
                result = measure(inference_predict(quantized), images, targets, how, batch_sizes=(batch_size,),
                                 reference=reference, label=f"fx_{name}")
        except Exception as exc:  # noqa: BLE001 - e.g. an op without a quantized kernel on this engine
            results[name] = failure(exc, f"running the {name} INT8 model")
            continue
        layers = layer_summary(quantized)
        if weight_read:
            layers["float"] += weight_read
            layers["float_layers"]["Linear (weights read directly)"] = weight_read
        results[name] = {"engine": backend, "qconfig": qconfig, "bias_correction": bias_correction, "layers": layers,
                         "size_mb": state_dict_mb(quantized), "calibration_images": len(calibration), **result}
    return results


# ----------------------------------------------------------------------------------------------
# What both zoo stages start from
@dataclass(frozen=True)
class ZooInputs:
    """Resolved weights, evaluation images and calibration images of the zoo pipeline's params."""

    models: dict[str, ResolvedWeights]
    evaluation: Subset
    calibration: tuple[Path, ...]
    calibration_targets: tuple[int, ...]  # their classes
    gate: tuple[Path, ...]  # the quality gate's own images (zoo.gate_images), () = it judges on the calibration images
    gate_targets: tuple[int, ...]  # the classes of the images the gate judges on
    description: dict[str, Any]  # for metrics: where the images and class list came from


def zoo_inputs(params: ZooParams, *, calibration_images: int = 0, gate_images: int = 0) -> ZooInputs:
    """Resolve every model's weights first (a missing file fails before any image is read), then
    split the image tree into evaluation, calibration and quality-gate images."""
    models = resolve_models(dict(params.models), params.weights_dir)
    if params.classes:
        classes, class_list = load_imagenet_classes(params.classes), str(params.classes)
    else:
        classes, class_list = default_imagenet_classes(), "timm's ImageNet-1k synset list (torchvision order)"
    subset = imagenet_subset(params.images, classes)
    evaluation, calibration, gate = evaluation_and_calibration(subset, params.max_images, calibration_images,
                                                               gate_images)
    description = {"root": str(params.images), "count": len(evaluation.paths),
                   "classes": evaluation.num_classes_present, "available": len(subset.paths), "class_list": class_list}
    first = len(evaluation.paths)
    after = first + len(calibration)
    calibration_targets = subset.targets[first:after]
    return ZooInputs(models, evaluation, calibration, calibration_targets, gate,
                     subset.targets[after:after + len(gate)] if gate else calibration_targets, description)
