"""The detection pipeline's params.yaml schema (`DetectionPipelineParams`): one `config.Settings` block
per stage under `detection:`, validated as a whole before any stage works (`stage.read_params`), so
a bad value anywhere stops every stage with one line such as
`params.yaml: detection.compress.prune_ratio=1.5 is invalid: must be a number in (0, 1)`.

Light on purpose (no torch, no model code): detector families are checked against
`families.FAMILIES` (plain data), not against the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecompress.config import (DEVICES, Settings, check, check_budget, check_choice, check_distinct, check_load_policy,
                                 is_batch_list)
from edgecompress.detection.families import FAMILIES
from edgecompress.quantize.config import OnnxInt8Config, OpenVINOConfig  # settings data only: no backend loaded

FORMATS = ("coco", "voc", "yolo")  # source data set formats
OPTIMIZERS = ("sgd", "adamw")  # detect_train / pruned fine-tuning
VARIANTS = ("fp32", "onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8", "pruned", "pruned_onnx_fp32",
            "pruned_openvino_fp32", "pruned_openvino_int8", "fp16", "fx_int8")  # detect_compress


@dataclass(frozen=True)
class DetectionDataParams(Settings):
    """Where the source detection data set is (never downloaded); paths relative to `root`."""

    format: str = "coco"  # coco | voc | yolo
    root: str = "../../../shared/data/coco128"
    annotations: str | None = "annotations/instances_train2017.json"  # COCO json | VOC Annotations/ folder
    images: str = "images/train2017"
    labels: str | None = None  # YOLO txt folder
    classes: str | None = None  # YOLO data.yaml / names.txt; VOC: null = names found

    def validate(self) -> None:
        check_choice(self.format, "format", FORMATS)
        if self.format in ("coco", "voc"):
            check(bool(self.annotations), "annotations", self.annotations, f"format {self.format} needs it")
        else:
            check(bool(self.labels), "labels", self.labels, "format yolo needs the labels folder")
            check(bool(self.classes), "classes", self.classes, "format yolo needs a data.yaml or names file")


@dataclass(frozen=True)
class DetectorParams(Settings):
    """One detector: its family, architecture and local weights (null = random initialisation)."""

    family: str = "yolov5"  # families.FAMILIES: yolov5 | ultralytics (detect_import's file or a yaml) | torchvision
    arch: str | None = None  # ultralytics model yaml (yolov8n.yaml) | torchvision builder (ssdlite320_mobilenet_v3_large)
    weights: str | None = "models/yolov5n.safe.pt"  # local file; null = random weights (labelled)

    def validate(self) -> None:
        check_choice(self.family, "family", FAMILIES)
        if not FAMILIES[self.family].random_init:
            check(bool(self.weights), "weights", self.weights,
                  f"family {self.family} needs the file detect_import wrote")
        else:
            check(bool(self.arch or self.weights), "arch", self.arch,
                  f"family {self.family} needs arch (a model yaml or builder name) or weights")


@dataclass(frozen=True)
class DetectionImportParams(Settings):
    """detect_import: the one step that unpickles a trusted checkpoint (an original YOLOv5 one or ultralytics
    weights) and writes it as a file every later stage loads with weights_only=True."""

    source: str = "../../../shared/weights/yolov5n.pt"
    out: str = "models/yolov5n.safe.pt"
    family: str = "yolov5"  # whose checkpoint `source` is: an imported family (yolov5 | ultralytics)

    def validate(self) -> None:
        check_choice(self.family, "family", [name for name, facts in FAMILIES.items() if facts.imported])


@dataclass(frozen=True)
class DetectionProfileParams(Settings):
    """detect_profile: torch.profiler tables and traces of each detector on a few images."""

    images: int = 8  # first images of the subset
    batch_size: int = 4
    iterations: int = 3  # profiled batches (after 1 warm-up)
    top: int = 25  # rows of the operator tables

    def validate(self) -> None:
        for key in ("images", "batch_size", "iterations", "top"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")


@dataclass(frozen=True)
class DetectionTrainParams(Settings):
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

    def validate(self) -> None:
        for key in ("epochs", "batch_size"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be an integer >= 1")
        check(self.workers >= 0, "workers", self.workers, "must be an integer >= 0")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check(self.lr > 0, "lr", self.lr, "must be a number > 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be a number in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be a number >= 0")
        check(0 <= self.hflip <= 1, "hflip", self.hflip, "must be a number in [0, 1]")
        check_choice(self.device, "device", DEVICES)


@dataclass(frozen=True)
class DetectionCompressParams(Settings):
    """detect_compress: compressed variants of one detector, evaluated like detect_eval."""

    model: str = "yolov5n"  # a key of detection.models
    variants: tuple[str, ...] = VARIANTS[:-1]  # fx_int8: torchvision backbones
    batch_size: int = 1
    calibration_images: int = 16  # INT8 calibration, drawn from source images outside the subset
    prune_ratio: float = 0.05  # channels removed per backbone/neck layer
    # Torch-Pruning's round_to: each pruned layer keeps a multiple of this many channels (the kept count is
    # rounded down; a layer that would be emptied stays unpruned); null = exactly int(n * (1 - prune_ratio))
    prune_round_to: int | None = None
    finetune_epochs: int = 3  # of the pruned model on the training split, with detection.train's settings; 0 = none
    finetune_lr: float | None = None  # learning rate of the pruned network's fine-tuning; null = detection.train.lr
    max_map_drop: float | None = None  # INT8 quality gate: mAP@.5 points vs FP32 on gate_images; null = off
    max_float_layers: int = 4  # at most this many convolutions kept float by the gate's fallback
    gate_images: int = 16  # training-split images the gate judges on (never the evaluated subset)
    # onnx_int8's ONNX Runtime settings, the chain's `quantize.onnx` class; its defaults (QDQ, uint8 activations,
    # per-channel weights, MinMax, pre-processed) are the choice detect_compress hard-coded before the block existed,
    # so results stay comparable. Detection-specific and not configurable: only Conv nodes are quantized (the decode
    # tail stays float) and calibration runs in batches of at most 8 images
    onnx: OnnxInt8Config = field(default_factory=OnnxInt8Config)
    # openvino_int8 / pruned_openvino_int8's NNCF settings, the chain's `quantize.openvino` class; the decode tail is
    # always added to its ignored scope (one INT8 scale over pixels and probabilities flattens the probabilities)
    openvino: OpenVINOConfig = field(default_factory=OpenVINOConfig)

    def validate(self) -> None:
        check_distinct(self.variants, "variants", VARIANTS)
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be an integer >= 1")
        check(self.calibration_images >= 1, "calibration_images", self.calibration_images, "must be an integer >= 1")
        check(0 < self.prune_ratio < 1, "prune_ratio", self.prune_ratio, "must be a number in (0, 1)")
        check(self.prune_round_to is None or self.prune_round_to >= 1, "prune_round_to", self.prune_round_to,
              "must be null or an integer >= 1")
        check(self.finetune_lr is None or self.finetune_lr > 0, "finetune_lr", self.finetune_lr,
              "must be null or a number > 0")
        check(self.finetune_epochs >= 0, "finetune_epochs", self.finetune_epochs, "must be an integer >= 0")
        check_budget(self.max_map_drop, "max_map_drop")
        check(self.max_float_layers >= 0, "max_float_layers", self.max_float_layers, "must be an integer >= 0")
        check(self.gate_images >= 1, "gate_images", self.gate_images, "must be an integer >= 1")


@dataclass(frozen=True)
class DetectionParams(Settings):
    data: DetectionDataParams = field(default_factory=DetectionDataParams)
    subset_images: int | None = 32  # seeded subset cut by detection_data; null = all
    train_images: int | None = None  # training split: source images outside the subset (seeded); null = all
    seed: int = 0
    import_: DetectionImportParams = field(default_factory=DetectionImportParams, metadata={"yaml": "import"})
    models: dict[str, DetectorParams] = field(default_factory=lambda: {"yolov5n": DetectorParams()})
    imgsz: int = 640  # pixels: letterboxed square input of the YOLO families
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 2
    warmup_batches: int = 1  # untimed batches before each timed pass
    # each timed pass (detect_eval: model x batch size, detect_compress: variant, detect_profile: model) watches the
    # machine's load (bench.contention): other processes' or stolen CPU above max_load cores flags it, and it runs
    # again (after waiting up to wait_s for a quiet machine) up to `retries` times; null = not monitored
    max_load: float | None = 0.25
    retries: int = 2
    wait_s: float = 30.0
    conf_threshold: float = 0.25  # boxes kept for precision/recall/F1 and the visualizations
    map_conf_threshold: float = 0.001  # boxes kept for mAP (low, as COCO evaluation expects)
    iou_threshold: float = 0.45  # NMS IoU
    max_det: int = 300
    map_agreement_points: float = 0.5  # percentage points: torchmetrics vs pycocotools tolerance
    visualize: int = 8  # images drawn per batch size
    profile: DetectionProfileParams = field(default_factory=DetectionProfileParams)
    compress: DetectionCompressParams = field(default_factory=DetectionCompressParams)
    train: DetectionTrainParams = field(default_factory=DetectionTrainParams)

    def validate(self) -> None:
        for key in ("subset_images", "train_images"):
            check(getattr(self, key) is None or getattr(self, key) >= 1, key, getattr(self, key),
                  "must be null or an integer >= 1")
        check(self.imgsz >= 32 and self.imgsz % 32 == 0, "imgsz", self.imgsz, "must be a multiple of 32, >= 32")
        check(is_batch_list(self.batch_sizes), "batch_sizes", self.batch_sizes,
              "must be a non-empty list of distinct integers >= 1")
        check_choice(self.device, "device", DEVICES)
        check(self.threads >= 1, "threads", self.threads, "must be an integer >= 1")
        check(self.warmup_batches >= 0, "warmup_batches", self.warmup_batches, "must be an integer >= 0")
        check_load_policy(self)
        for key in ("conf_threshold", "map_conf_threshold", "iou_threshold"):
            check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "must be a number in [0, 1]")
        check(self.max_det >= 1, "max_det", self.max_det, "must be an integer >= 1")
        check(self.map_agreement_points > 0, "map_agreement_points", self.map_agreement_points, "must be > 0")
        check(self.visualize >= 0, "visualize", self.visualize, "must be an integer >= 0")
        for block in ("compress", "train"):
            model = getattr(self, block).model
            check(model in self.models, f"{block}.model", model,
                  f"must be a key of detection.models ({', '.join(self.models)})")


@dataclass(frozen=True)
class DetectionPipelineParams(Settings):
    detection: DetectionParams = field(default_factory=DetectionParams)
