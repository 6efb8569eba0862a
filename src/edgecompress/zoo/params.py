"""The params.yaml schemas of the zoo pipeline (pipelines/zoo/params.yaml: the `zoo` block of stages
zoo_benchmark, zoo_quantize, zoo_report; `ZooPipelineParams`) and of the opt-in fine-tuning pipeline
(pipelines/finetune/params.yaml: the `finetune` block of stage finetune_cifar100;
`FinetunePipelineParams`), each validated as a whole before any stage works (`stage.read_params`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecompress.config import (Settings, check, check_budget, check_choice, check_distinct, check_load_policy,
                                 is_batch_list)
from edgecompress.data import AugmentParams, DataParams
from edgecompress.quantize.config import OnnxInt8Config, OpenVINOConfig
from edgecompress.train import TrainParams
from edgecompress.weights import OWN_WEIGHTS, PRETRAINED, WEIGHTS_CHOICES, zoo_classifiers

STATIC_QCONFIGS = ("x86", "fbgemm", "qnnpack", "custom", "vnni")  # FX static INT8 per engine, plus two x86 QConfigs
RUNTIMES = ("compiled", "onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8")  # zoo.runtimes.RUNTIMES


@dataclass(frozen=True)
class ZooParams(Settings):
    """Pretrained ImageNet models on an image-folder subset: accuracy, cost and quantization."""

    images: str = "../../../shared/data/imagenet-sample"  # <root>/<wnid or class index>/<image>
    classes: str | None = None  # 'index wnid name' lines; null = timm's ImageNet-1k synset list
    max_images: int = 100  # evaluation images, one per class first
    models: dict[str, str] = field(default_factory=lambda: {"mobilenet_v2": PRETRAINED})  # arch: pretrained|random
    weights_dir: str | None = None  # null = torch hub's checkpoint folder; then installed packages
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    warmup: int = 1  # untimed calls per batch size
    repeats: int = 3  # timed calls per batch size (median, IQR)
    min_time_s: float = 0.0
    # every timed measurement (model x variant x batch size) watches the machine's load (bench.contention):
    # other processes' or stolen CPU above max_load cores flags it, and it is timed again (after waiting up
    # to wait_s for a quiet machine) up to `retries` times; null = not monitored
    max_load: float | None = 0.25
    retries: int = 2
    wait_s: float = 30.0
    threads: int = 2
    eval_batch_size: int = 25
    dynamic: bool = True  # dynamic INT8 (Linear layers) over batch_sizes
    static: tuple[str, ...] = STATIC_QCONFIGS  # an empty list measures no static INT8
    static_batch_size: int = 8  # latency of the static INT8 models at this batch size
    static_bias_correction: bool = False  # empirical bias correction of the static INT8 models (~+35 s per model)
    calibration_batches: int = 1  # of calibration_batch_size images not used for evaluation
    calibration_batch_size: int = 16
    runtimes: tuple[str, ...] = RUNTIMES  # the other runtimes each model is measured on (zoo_quantize)
    runtime_batch_sizes: tuple[int, ...] = (1, 8)  # their latency at these batch sizes (each one of batch_sizes)
    runtimes_on: str = PRETRAINED  # pretrained: only models with real weights (random ones are smoke stand-ins) | all
    openvino: OpenVINOConfig = field(default_factory=OpenVINOConfig)  # NNCF's settings for openvino_int8
    onnx: OnnxInt8Config = field(default_factory=OnnxInt8Config)  # ONNX Runtime's settings for onnx_int8
    max_accuracy_drop: float | None = None  # quality gate of onnx_int8/openvino_int8: top-1 points vs FP32
    max_float_layers: int = 4  # at most this many nodes kept float by the fallback
    # images the gate judges on: null = the calibration images (as NNCF's accuracy control takes one validation
    # set); N = the N images after the calibration ones, never calibrated with nor evaluated
    gate_images: int | None = None

    def validate(self) -> None:
        known = zoo_classifiers()
        for arch, weights in self.models.items():
            check(arch in known, f"models.{arch}", weights, "not a torchvision ImageNet classifier (e.g. "
                  f"resnet18, mobilenet_v3_large, efficientnet_b0, vit_b_16, swin_t) nor one of "
                  f"{', '.join(sorted(OWN_WEIGHTS))}")
            check_choice(weights, f"models.{arch}", WEIGHTS_CHOICES)
        check(self.max_images >= 1, "max_images", self.max_images, "must be an integer >= 1")
        check(is_batch_list(self.batch_sizes), "batch_sizes", self.batch_sizes,
              "must be a non-empty list of distinct integers >= 1")
        check(self.warmup >= 0, "warmup", self.warmup, "must be an integer >= 0")
        check(self.repeats >= 3, "repeats", self.repeats, "must be an integer >= 3 (median and IQR)")
        check(0 <= self.min_time_s <= 60, "min_time_s", self.min_time_s, "must be seconds in [0, 60]")
        check_load_policy(self)
        check(self.threads >= 1, "threads", self.threads, "must be an integer >= 1")
        check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be an integer >= 1")
        check_distinct(self.static, "static", STATIC_QCONFIGS, non_empty=False)
        check(self.static_batch_size in self.batch_sizes, "static_batch_size", self.static_batch_size,
              f"must be one of zoo.batch_sizes {list(self.batch_sizes)} (its FP32 latency is the reference)")
        check(self.calibration_batches >= 1, "calibration_batches", self.calibration_batches,
              "must be an integer >= 1")
        check(self.calibration_batch_size >= 1, "calibration_batch_size", self.calibration_batch_size,
              "must be an integer >= 1")
        check_distinct(self.runtimes, "runtimes", RUNTIMES, non_empty=False)
        check_budget(self.max_accuracy_drop, "max_accuracy_drop")
        check(self.max_float_layers >= 0, "max_float_layers", self.max_float_layers, "must be an integer >= 0")
        check(self.gate_images is None or self.gate_images >= 1, "gate_images", self.gate_images,
              "must be null (the calibration images) or an integer >= 1")
        check_choice(self.runtimes_on, "runtimes_on", (PRETRAINED, "all"))
        check(is_batch_list(self.runtime_batch_sizes) and set(self.runtime_batch_sizes) <= set(self.batch_sizes),
              "runtime_batch_sizes", self.runtime_batch_sizes,
              f"must be distinct batch sizes among zoo.batch_sizes {list(self.batch_sizes)} (eager FP32 is timed there)")

    @property
    def calibration_images(self) -> int:
        """Never-evaluated images that static INT8 calibrates on."""
        return self.calibration_batches * self.calibration_batch_size


@dataclass(frozen=True)
class FinetuneParams(Settings):
    """Fine-tuning a pretrained torchvision classifier on a new data set (CIFAR-100 by default)."""

    arch: str = "resnet18"  # checked where the weights are resolved (`zoo.finetune.resolve_finetune_weights`)
    weights: str = PRETRAINED  # pretrained (official ImageNet file, never downloaded) | random
    weights_dir: str | None = None  # null = torch hub's checkpoint folder; then installed packages
    train_stages: tuple[str, ...] = ("layer3", "layer4", "fc")  # parameter-name prefixes that train
    data: DataParams = field(default_factory=lambda: DataParams(name="cifar100", root="data/cifar100"))
    train: TrainParams = field(default_factory=lambda: TrainParams(
        lr=0.01, augment=AugmentParams(hflip=True, rotation=0.0, random_erasing=0.25)))
    epochs: int = 10
    seed: int = 0

    def validate(self) -> None:
        check_choice(self.weights, "weights", WEIGHTS_CHOICES)
        check(bool(self.train_stages), "train_stages", self.train_stages,
              "must name at least one parameter prefix that trains (e.g. fc)")
        check(self.epochs >= 1, "epochs", self.epochs, "must be an integer >= 1")


@dataclass(frozen=True)
class ZooPipelineParams(Settings):
    """The whole of pipelines/zoo/params.yaml."""

    zoo: ZooParams = field(default_factory=ZooParams)


@dataclass(frozen=True)
class FinetunePipelineParams(Settings):
    """The whole of pipelines/finetune/params.yaml (an opt-in pipeline: its data is not shipped)."""

    finetune: FinetuneParams = field(default_factory=FinetuneParams)
