"""Typed schema of params.yaml, validated before any stage does work.

Each block of params.yaml maps to a frozen dataclass. `load_params` checks types, unknown keys and
ranges for the WHOLE file, so a bad value anywhere stops every stage with one line such as
`params.yaml: distill.alpha=1.5 is invalid: must be a number in [0, 1]` and nothing is written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edgecompress import EdgecompressError
from edgecompress.bench import BenchConfig
from edgecompress.quantize import QuantizeConfig

if TYPE_CHECKING:  # annotations only: importing them here would be circular
    from edgecompress.prune import PruneConfig
    from edgecompress.zoo import Measurement

DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "step")


class ParamError(EdgecompressError):
    """A bad value for one key; `key` gets its section prefix added while the schema is walked."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ParamError(key, value, allowed) unless `ok`."""
    if not ok:
        raise ParamError(key, value, allowed)


# ----------------------------------------------------------------------------------------------
# Schema
@dataclass(frozen=True)
class DataParams:
    name: str = "digits"  # digits | cifar10 | cifar100 | imagefolder
    root: str | None = None  # data set location for cifar10/cifar100/imagefolder
    image_size: int = 32  # pixels, square
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_samples: int | None = None  # stratified cap on images (None = all)
    seed: int = 0

    def __post_init__(self) -> None:
        from edgecompress.data import dataset_names

        check(self.name in dataset_names(), "name", self.name, f"allowed: {', '.join(dataset_names())}")
        check(self.name == "digits" or bool(self.root), "root", self.root, f"data set '{self.name}' needs a local path")
        check(self.image_size >= 8, "image_size", self.image_size, "must be an integer >= 8")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            check(0 < value < 1, key, value, "must be a number in (0, 1)")
        check(self.val_fraction + self.test_fraction < 1, "test_fraction", self.test_fraction,
              "val_fraction + test_fraction must be < 1")
        check(self.max_samples is None or self.max_samples >= 1, "max_samples", self.max_samples,
              "must be null or an integer >= 1")


@dataclass(frozen=True)
class ArchParams:
    arch: str = "resnet20"  # registry name (see README) or timm:<name>
    width: float = 1.0  # channel multiplier (CIFAR ResNets)

    def __post_init__(self) -> None:
        from edgecompress.models import architecture_names, is_known_architecture

        check(is_known_architecture(self.arch), "arch", self.arch,
              f"allowed: {', '.join(architecture_names())} or timm:<name>")
        check(0 < self.width <= 8, "width", self.width, "must be a number in (0, 8]")


@dataclass(frozen=True)
class ModelParams:
    teacher: ArchParams = field(default_factory=lambda: ArchParams("resnet32", 1.0))
    student: ArchParams = field(default_factory=lambda: ArchParams("resnet20", 0.5))
    small_input: bool = True  # torchvision archs: 3x3 stride-1 stem for 32x32 images


@dataclass(frozen=True)
class AugmentParams:
    hflip: bool = False  # off for digits: a mirrored digit is another glyph
    crop_padding: int = 4  # pixels of padding for random crop, 0 = off
    color_jitter: float = 0.2  # brightness/contrast/saturation strength, 0 = off
    rotation: float = 15.0  # degrees, 0 = off
    random_erasing: float = 0.0  # probability of erasing a random rectangle (Zhong et al.), 0 = off

    def __post_init__(self) -> None:
        check(0 <= self.random_erasing <= 1, "random_erasing", self.random_erasing, "must be a probability in [0, 1]")
        check(self.crop_padding >= 0, "crop_padding", self.crop_padding, "must be an integer >= 0")
        check(0 <= self.color_jitter <= 1, "color_jitter", self.color_jitter, "must be a number in [0, 1]")
        check(0 <= self.rotation <= 180, "rotation", self.rotation, "must be degrees in [0, 180]")


@dataclass(frozen=True)
class TrainParams:
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 64
    lr: float = 0.05  # SGD learning rate at epoch 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    step_size: int = 10  # epochs between decays (schedule: step)
    gamma: float = 0.1  # decay factor (schedule: step)
    amp: bool = True  # mixed precision; only ever enabled on CUDA
    num_workers: int = 0  # DataLoader workers; 0 keeps CPU runs deterministic and light
    augment: AugmentParams = field(default_factory=AugmentParams)
    nproc: int = 1  # processes per node; > 1 runs the stage under torchrun with DistributedDataParallel
    nnodes: int = 1  # machines (torchrun --nnodes); > 1 needs rdzv_endpoint
    node_rank: int = 0  # this machine's index (torchrun --node_rank)
    rdzv_endpoint: str | None = None  # host:port of node 0 (torchrun --rdzv_endpoint)
    sync_batchnorm: bool = True  # BatchNorm over the global batch (SyncBatchNorm; CUDA only)

    def __post_init__(self) -> None:
        check(self.device in DEVICES, "device", self.device, f"allowed: {', '.join(DEVICES)}")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")
        check(self.lr > 0, "lr", self.lr, "must be a number > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be a number in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be a number >= 0")
        check(self.schedule in SCHEDULES, "schedule", self.schedule, f"allowed: {', '.join(SCHEDULES)}")
        check(self.step_size >= 1, "step_size", self.step_size, "must be an integer >= 1")
        check(0 < self.gamma <= 1, "gamma", self.gamma, "must be a number in (0, 1]")
        check(self.num_workers >= 0, "num_workers", self.num_workers, "must be an integer >= 0")
        check(self.nproc >= 1, "nproc", self.nproc, "must be an integer >= 1")
        check(self.nproc == 1 or self.batch_size % self.nproc == 0, "batch_size", self.batch_size,
              f"must be divisible by train.nproc={self.nproc} (the global batch is split across processes)")
        check(self.nnodes >= 1, "nnodes", self.nnodes, "must be an integer >= 1")
        check(0 <= self.node_rank < self.nnodes, "node_rank", self.node_rank, "must be in [0, nnodes)")
        check(self.nnodes == 1 or bool(self.rdzv_endpoint), "rdzv_endpoint", self.rdzv_endpoint,
              "must be host:port of node 0 when nnodes > 1")


@dataclass(frozen=True)
class RunParams:
    epochs: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be an integer >= 1")


@dataclass(frozen=True)
class DistillParams:
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha on hard labels
    temperature: float = 4.0  # softmax temperature T

    def __post_init__(self) -> None:
        check(0 <= self.alpha <= 1, "alpha", self.alpha, "must be a number in [0, 1]")
        check(self.temperature > 0, "temperature", self.temperature, "must be a number > 0")


@dataclass(frozen=True)
class PruneParams:
    ratio: float = 0.2  # fraction of channels removed per prunable group, [0, 1)
    importance: str = "l1"  # l1 | l2 | taylor | random (control)
    global_pruning: bool = field(default=False, metadata={"yaml": "global"})  # rank across layers
    iterative_steps: int = 1  # prune in this many steps, re-ranking after each
    round_to: int | None = None  # keep channel counts multiples of this; null = exact
    finetune_epochs: int = 5  # after pruning; 0 = none
    finetune_lr: float = 0.01
    finetune_kd: bool = True  # fine-tune with the distillation loss from the teacher
    seed: int = 3

    def __post_init__(self) -> None:
        self.config()  # PruneConfig validates ratio/importance/steps with prune.<key> messages
        check(self.finetune_epochs >= 0, "finetune_epochs", self.finetune_epochs, "must be an integer >= 0")
        check(self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "must be a number > 0")

    def config(self) -> "PruneConfig":
        """The pruning method's settings (`prune.PruneConfig`)."""
        from edgecompress.prune import PruneConfig

        return PruneConfig(ratio=self.ratio, importance=self.importance, global_pruning=self.global_pruning,
                           iterative_steps=self.iterative_steps, round_to=self.round_to)


@dataclass(frozen=True)
class QuantizeParams(QuantizeConfig):
    """`quantize` block: the method settings (`quantize.QuantizeConfig`, validated there) plus a seed."""

    seed: int = 4

    def config(self) -> QuantizeConfig:
        """The settings without the stage-level seed."""
        return QuantizeConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(QuantizeConfig)})


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    teacher: RunParams = field(default_factory=RunParams)
    student: RunParams = field(default_factory=RunParams)  # student_baseline and distill share it
    distill: DistillParams = field(default_factory=DistillParams)
    prune: PruneParams = field(default_factory=PruneParams)
    quantize: QuantizeParams = field(default_factory=QuantizeParams)
    bench: BenchConfig = field(default_factory=BenchConfig)


# ----------------------------------------------------------------------------------------------
# Schema of the zoo pipeline (pipelines/zoo/params.yaml)
WEIGHTS_CHOICES = ("pretrained", "random")
STATIC_QCONFIGS = ("x86", "fbgemm", "qnnpack", "custom")


def _is_batch_list(value: tuple[int, ...]) -> bool:
    return bool(value) and len(set(value)) == len(value) and all(v >= 1 for v in value)


@dataclass(frozen=True)
class ZooParams:
    """Pretrained ImageNet models on an image-folder subset: accuracy, cost and quantization."""

    images: str = "../../../shared/data/imagenet-sample"  # <root>/<wnid or class index>/<image>
    classes: str | None = None  # 'index wnid name' lines; null = timm's ImageNet-1k synset list
    max_images: int = 100  # evaluation images, one per class first
    models: dict[str, str] = field(default_factory=lambda: {"mobilenet_v2": "pretrained"})
    weights_dir: str | None = None  # null = torch hub's checkpoint folder; then installed packages
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    warmup: int = 1  # untimed calls per batch size
    repeats: int = 3  # timed calls per batch size (median, IQR)
    min_time_s: float = 0.0
    threads: int = 2
    eval_batch_size: int = 25
    dynamic: bool = True  # dynamic INT8 (Linear layers) over batch_sizes
    static: tuple[str, ...] = STATIC_QCONFIGS  # FX static INT8 per engine, plus the custom QConfig
    static_batch_size: int = 8  # latency of the static INT8 models at this batch size
    calibration_batches: int = 1  # of calibration_batch_size images not used for evaluation
    calibration_batch_size: int = 16

    def measurement(self) -> "Measurement":
        """The latency/evaluation settings (`zoo.Measurement`)."""
        from edgecompress.zoo import Measurement

        return Measurement(batch_sizes=self.batch_sizes, warmup=self.warmup, repeats=self.repeats,
                           min_time_s=self.min_time_s, eval_batch_size=self.eval_batch_size)

    def __post_init__(self) -> None:
        from edgecompress.zoo import torchvision_classifiers

        check(bool(self.models), "models", self.models, "must map at least one architecture to pretrained|random")
        known = torchvision_classifiers()
        for arch, weights in self.models.items():
            check(arch in known, f"models.{arch}", weights, "not a torchvision ImageNet classifier (e.g. "
                  "resnet18, mobilenet_v3_large, efficientnet_b0, vit_b_16, swin_t)")
            check(weights in WEIGHTS_CHOICES, f"models.{arch}", weights, f"allowed: {', '.join(WEIGHTS_CHOICES)}")
        check(self.max_images >= 1, "max_images", self.max_images, "must be an integer >= 1")
        check(_is_batch_list(self.batch_sizes), "batch_sizes", list(self.batch_sizes),
              "must be a non-empty list of distinct integers >= 1")
        check(self.warmup >= 0, "warmup", self.warmup, "must be an integer >= 0")
        check(self.repeats >= 3, "repeats", self.repeats, "must be an integer >= 3 (median and IQR)")
        check(0 <= self.min_time_s <= 60, "min_time_s", self.min_time_s, "must be seconds in [0, 60]")
        check(self.threads >= 1, "threads", self.threads, "must be an integer >= 1")
        check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be an integer >= 1")
        check(all(s in STATIC_QCONFIGS for s in self.static) and len(set(self.static)) == len(self.static),
              "static", list(self.static), f"must be a list of distinct: {', '.join(STATIC_QCONFIGS)}")
        check(self.static_batch_size in self.batch_sizes, "static_batch_size", self.static_batch_size,
              f"must be one of zoo.batch_sizes {list(self.batch_sizes)} (its FP32 latency is the reference)")
        check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches,
              "must be an integer >= 1")
        check(self.calibration_batch_size >= 1, "calibration_batch_size", self.calibration_batch_size,
              "must be an integer >= 1")


@dataclass(frozen=True)
class FinetuneParams:
    """Fine-tuning a pretrained torchvision classifier on a new data set (CIFAR-100 by default)."""

    arch: str = "resnet18"
    weights: str = "pretrained"  # pretrained (official ImageNet file, never downloaded) | random
    weights_dir: str | None = None  # null = torch hub's checkpoint folder; then installed packages
    train_stages: tuple[str, ...] = ("layer3", "layer4", "fc")  # parameter-name prefixes that train
    data: DataParams = field(default_factory=lambda: DataParams(name="cifar100", root="data/cifar100"))
    train: TrainParams = field(default_factory=lambda: TrainParams(
        lr=0.01, augment=AugmentParams(hflip=True, rotation=0.0, random_erasing=0.25)))
    epochs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.weights in WEIGHTS_CHOICES, "weights", self.weights, f"allowed: {', '.join(WEIGHTS_CHOICES)}")
        check(bool(self.train_stages), "train_stages", list(self.train_stages),
              "must name at least one parameter prefix that trains (e.g. fc)")
        check(self.epochs >= 1, "epochs", self.epochs, "must be an integer >= 1")


@dataclass(frozen=True)
class ZooPipelineParams:
    zoo: ZooParams = field(default_factory=ZooParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)


DETECTION_FORMATS = ("coco", "voc", "yolo")
DETECTOR_FAMILIES = ("yolov5", "ultralytics", "torchvision")


@dataclass(frozen=True)
class DetectionDataParams:
    """Where the source detection data set is (never downloaded); paths relative to `root`."""

    format: str = "coco"  # coco | voc | yolo
    root: str = "../../../shared/data/coco128"
    annotations: str | None = "annotations/instances_train2017.json"  # COCO json | VOC Annotations/ folder
    images: str = "images/train2017"
    labels: str | None = None  # YOLO txt folder
    classes: str | None = None  # YOLO data.yaml / names.txt; VOC: null = names found

    def __post_init__(self) -> None:
        check(self.format in DETECTION_FORMATS, "format", self.format, f"allowed: {', '.join(DETECTION_FORMATS)}")
        if self.format in ("coco", "voc"):
            check(bool(self.annotations), "annotations", self.annotations, f"format {self.format} needs it")
        else:
            check(bool(self.labels), "labels", self.labels, "format yolo needs the labels folder")
            check(bool(self.classes), "classes", self.classes, "format yolo needs a data.yaml or names file")


@dataclass(frozen=True)
class DetectorParams:
    """One detector: its family, architecture and local weights (null = random initialisation)."""

    family: str = "yolov5"  # yolov5 (imported original checkpoint) | ultralytics | torchvision
    arch: str | None = None  # ultralytics model yaml (yolov8n.yaml) | torchvision builder (ssdlite320_mobilenet_v3_large)
    weights: str | None = "models/yolov5n.safe.pt"  # local file; null = random weights (labelled)

    def __post_init__(self) -> None:
        check(self.family in DETECTOR_FAMILIES, "family", self.family, f"allowed: {', '.join(DETECTOR_FAMILIES)}")
        if self.family == "yolov5":
            check(bool(self.weights), "weights", self.weights, "family yolov5 needs the file detect_import wrote")
        else:
            check(bool(self.arch or self.weights), "arch", self.arch,
                  f"family {self.family} needs arch (a model yaml or builder name) or weights")


@dataclass(frozen=True)
class DetectionImportParams:
    """detect_import: the one step that unpickles a trusted original YOLOv5 checkpoint."""

    source: str = "../../../shared/weights/yolov5n.pt"
    out: str = "models/yolov5n.safe.pt"


@dataclass(frozen=True)
class DetectionProfileParams:
    """detect_profile: torch.profiler tables and traces of each detector on a few images."""

    images: int = 8  # first images of the subset
    batch_size: int = 4
    iterations: int = 3  # profiled batches (after 1 warm-up)
    top: int = 25  # rows of the operator tables

    def __post_init__(self) -> None:
        for key in ("images", "batch_size", "iterations", "top"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")


DETECTION_OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class DetectionTrainParams:
    """detect_train: fine-tuning of one detector on the training split (source images outside the
    evaluation subset); also the settings of the pruned variant's fine-tuning in detect_compress."""

    model: str = "yolov5n"  # a key of detection.models
    epochs: int = 3
    batch_size: int = 8
    workers: int = 0  # DataLoader worker processes
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.0001  # 1e-3 lowers yolov5n's subset mAP (docs/experiments/detect_finetune_probes.py)
    momentum: float = 0.937  # SGD momentum / AdamW beta1 (YOLOv5's default)
    weight_decay: float = 0.0005
    hflip: float = 0.5  # probability of a horizontal flip
    freeze_batchnorm: bool = True  # keep BatchNorm statistics (small-batch fine-tuning); yolov5/torchvision loop
    device: str = "auto"  # cpu | cuda | auto

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")
        check(self.workers >= 0, "workers", self.workers, "must be an integer >= 0")
        check(self.optimizer in DETECTION_OPTIMIZERS, "optimizer", self.optimizer,
              f"allowed: {', '.join(DETECTION_OPTIMIZERS)}")
        check(self.lr > 0, "lr", self.lr, "must be a number > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be a number in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be a number >= 0")
        check(0 <= self.hflip <= 1, "hflip", self.hflip, "must be a number in [0, 1]")
        check(self.device in DEVICES, "device", self.device, f"allowed: {', '.join(DEVICES)}")


DETECTION_VARIANTS = ("fp32", "onnx_fp32", "onnx_int8", "pruned", "fp16", "fx_int8")


@dataclass(frozen=True)
class DetectionCompressParams:
    """detect_compress: compressed variants of one detector, evaluated like detect_eval."""

    model: str = "yolov5n"  # a key of detection.models
    variants: tuple[str, ...] = DETECTION_VARIANTS[:5]  # fx_int8: torchvision backbones
    batch_size: int = 1
    calibration_images: int = 16  # INT8 calibration, drawn from source images outside the subset
    prune_ratio: float = 0.05  # channels removed per backbone/neck layer
    finetune_epochs: int = 3  # of the pruned model on the training split, with detection.train's settings; 0 = none

    def __post_init__(self) -> None:
        check(bool(self.variants) and all(v in DETECTION_VARIANTS for v in self.variants)
              and len(set(self.variants)) == len(self.variants), "variants", list(self.variants),
              f"must be a list of distinct: {', '.join(DETECTION_VARIANTS)}")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")
        check(self.calibration_images >= 1, "calibration_images", self.calibration_images, "must be an integer >= 1")
        check(0 < self.prune_ratio < 1, "prune_ratio", self.prune_ratio, "must be a number in (0, 1)")
        check(self.finetune_epochs >= 0, "finetune_epochs", self.finetune_epochs, "must be an integer >= 0")


@dataclass(frozen=True)
class DetectionParams:
    data: DetectionDataParams = field(default_factory=DetectionDataParams)
    subset_images: int | None = 32  # seeded subset cut by detection_data; null = all
    train_images: int | None = None  # training split: source images outside the subset (seeded); null = all
    seed: int = 0
    import_: DetectionImportParams = field(default_factory=DetectionImportParams, metadata={"yaml": "import"})
    models: dict[str, DetectorParams] = field(default_factory=lambda: {"yolov5n": DetectorParams()})
    imgsz: int = 640  # letterboxed square input of the YOLO families
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 2
    warmup_batches: int = 1  # untimed batches before each timed pass
    conf_threshold: float = 0.25  # boxes kept for precision/recall/F1 and the visualizations
    map_conf_threshold: float = 0.001  # boxes kept for mAP (low, as COCO evaluation expects)
    iou_threshold: float = 0.45  # NMS IoU
    max_det: int = 300
    map_agreement_points: float = 0.5  # torchmetrics vs pycocotools tolerance
    visualize: int = 8  # images drawn per batch size
    profile: DetectionProfileParams = field(default_factory=DetectionProfileParams)
    compress: DetectionCompressParams = field(default_factory=DetectionCompressParams)
    train: DetectionTrainParams = field(default_factory=DetectionTrainParams)

    def __post_init__(self) -> None:
        for key in ("subset_images", "train_images"):
            check(getattr(self, key) is None or getattr(self, key) >= 1, key, getattr(self, key),
                  "must be null or an integer >= 1")
        check(bool(self.models), "models", self.models, "must name at least one detector")
        check(self.imgsz >= 32 and self.imgsz % 32 == 0, "imgsz", self.imgsz, "must be a multiple of 32, >= 32")
        check(_is_batch_list(self.batch_sizes), "batch_sizes", list(self.batch_sizes),
              "must be a non-empty list of distinct integers >= 1")
        check(self.device in DEVICES, "device", self.device, f"allowed: {', '.join(DEVICES)}")
        check(self.threads >= 1, "threads", self.threads, "must be an integer >= 1")
        check(self.warmup_batches >= 0, "warmup_batches", self.warmup_batches, "must be an integer >= 0")
        for key in ("conf_threshold", "map_conf_threshold", "iou_threshold"):
            check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "must be a number in [0, 1]")
        check(self.max_det >= 1, "max_det", self.max_det, "must be an integer >= 1")
        check(self.map_agreement_points > 0, "map_agreement_points", self.map_agreement_points, "must be > 0")
        check(self.visualize >= 0, "visualize", self.visualize, "must be an integer >= 0")
        check(self.compress.model in self.models, "compress.model", self.compress.model,
              f"must be a key of detection.models ({', '.join(self.models)})")
        check(self.train.model in self.models, "train.model", self.train.model,
              f"must be a key of detection.models ({', '.join(self.models)})")


@dataclass(frozen=True)
class DetectionPipelineParams:
    detection: DetectionParams = field(default_factory=DetectionParams)


# ----------------------------------------------------------------------------------------------
# Loading
def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting YAML lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is dict:
        check(isinstance(value, dict) and bool(value), key, value, "must be a non-empty mapping")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        check(isinstance(value, (list, tuple)), key, value, "must be a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, key) for v in value)
    if dataclasses.is_dataclass(tp):
        check(isinstance(value, dict), key, value, "must be a mapping")
        return _build(tp, value, key)
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, f"must be {_type_name(tp)}")
        return value  # an int is a valid float; kept as written so errors echo the user's value
    if tp in (int, bool, str):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        check(ok, key, value, f"must be {_type_name(tp)}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    # YAML name -> field name; a field's metadata "yaml" renames it (`global` is a Python keyword).
    names = {f.metadata.get("yaml", f.name): f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise EdgecompressError(f"{full} is not a known parameter; allowed under "
                                    f"{prefix or 'the top level'}: {', '.join(names)}")
    kwargs = {names[k]: _coerce(v, hints[names[k]], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ParamError as exc:
        if prefix and not exc.key.startswith(prefix + "."):
            raise ParamError(f"{prefix}.{exc.key}", exc.value, exc.allowed) from None
        raise


def parse_params(data: dict[str, Any] | None) -> Params:
    """Validate a params mapping (as read from params.yaml) into `Params`."""
    return _build(Params, data or {}, "")


def load_params(path: str | Path = "params.yaml", schema: type = Params) -> Any:
    """Read and validate params.yaml (the chain's `Params`, or another pipeline's `schema`).

    Raises:
        EdgecompressError: one line naming the file, the key, the value and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgecompressError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise EdgecompressError(f"{path}: must be a mapping of blocks (data, model, train, ...)")
    try:
        return _build(schema, data or {}, "")
    except EdgecompressError as exc:
        raise EdgecompressError(f"{path}: {exc}") from None


def as_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a params dataclass, for metrics files."""
    return dataclasses.asdict(obj)
