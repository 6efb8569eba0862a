"""Object detectors of the detection pipeline, from local files only: the one explicit import of
foreign pickled checkpoints (original YOLOv5, ultralytics), `Detector` (and `RawHead`, the raw head
output its compressed variants export and prune), and one loader per detector family.

One unpickling policy: YOLOv5 and ultralytics checkpoints are pickled model objects (code runs when
they load). `import_checkpoint` (stage detect_import) is the one explicit step that unpickles a
checkpoint the user names and trusts (`detection.import.source`, sha256 recorded) and writes a plain
file: {model config dict, class names, strides, state dict}. Every other load is `weights_only=True`:
the loaders rebuild the network from the config and load the state dict; a pickle given as `weights`
is refused with one line pointing at detect_import.

Families (their facts are data in `detection.families`; each has a loader here, `@loader(<family>)`):
- `yolov5`: imported original YOLOv5 checkpoints (the reference study's models), rebuilt with the
  `yolov5` package's `DetectionModel`.
- `ultralytics`: imported ultralytics weights (yolov8, yolo11 ...), rebuilt with
  `ultralytics.nn.tasks.DetectionModel`; or a model yaml (random weights).
- `torchvision`: SSD300-VGG16, SSDlite, Faster R-CNN (ResNet-50 FPN / MobileNetV3) builders, with
  weights from a local state-dict file or random.

The model packages (yolov5, ultralytics, torchvision's detection models) are imported inside the
loaders: each is heavy and only the families in use need theirs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

from edgecompress import EdgecompressError, first_line
from edgecompress.detection.families import FAMILIES, Family
from edgecompress.detection.params import DetectorParams
from edgecompress.io import load_torch, save_torch

log = logging.getLogger(__name__)


class Importable(NamedTuple):
    """How detect_import reads a family's pickled checkpoints and tags the safe file it writes."""

    format: str  # the safe file's "format" tag
    label: str  # name in messages
    package: str  # module that defines the classes its pickles name
    needs: str  # how to get that package
    example: str  # a checkpoint it imports


IMPORTS = {
    "yolov5": Importable("edgecompress-yolov5-v1", "YOLOv5", "yolov5.models.yolo",
                         "the `yolov5` package (pip install yolov5; it imports pkg_resources, so setuptools<81)",
                         "yolov5n.pt from the ultralytics/yolov5 releases"),
    "ultralytics": Importable("edgecompress-ultralytics-v1", "ultralytics", "ultralytics.nn.tasks",
                              "the `ultralytics` package", "yolov8n.pt or yolo11n.pt from the ultralytics/assets releases"),
}  # the families detect_import reads (`Family.imported`)
RANDOM_WEIGHTS = "random weights"  # Detector.weights of a randomly initialised model
TORCHVISION_DETECTORS = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet50_fpn",
                         "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")

# COCO category id -> name (torchvision detectors' label space; "" for the unused ids)
COCO91 = ["", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
          "traffic light", "fire hydrant", "", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
          "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "", "backpack", "umbrella", "", "",
          "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
          "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "", "wine glass", "cup", "fork",
          "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
          "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "", "dining table", "", "",
          "toilet", "", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
          "toaster", "sink", "refrigerator", "", "book", "clock", "vase", "scissors", "teddy bear",
          "hair drier", "toothbrush"]


# ----------------------------------------------------------------------------------------------
# Detector
@dataclass
class Detector:
    """A loaded detector with its class names and the way its raw output becomes boxes."""

    name: str
    family: str  # a key of families.FAMILIES
    arch: str
    model: nn.Module
    classes: list[str]
    weights: str  # the file the weights came from, or "random weights"
    imgsz: int
    device: torch.device

    @property
    def facts(self) -> Family:
        """The family's registry entry."""
        return FAMILIES[self.family]

    @property
    def random_weights(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def letterboxed(self) -> bool:
        return self.facts.letterboxed

    @property
    def output_classes(self) -> list[str]:
        """Class name of each index the model outputs: torchvision's COCO detectors predict COCO
        category ids (91 slots, "" where unused), the YOLO families their own class list."""
        return COCO91 if self.facts.coco_category_ids else self.classes

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class Loaded(NamedTuple):
    """What a family's loader returns."""

    model: nn.Module
    classes: list[str]  # class name of each model class index
    weights: str  # the file the weights came from, or RANDOM_WEIGHTS
    arch: str


Loader = Callable[..., Loaded]  # (spec: DetectorParams, dataset_classes, *, fuse: bool) -> Loaded
LOADERS: dict[str, Loader] = {}


def loader(family: str) -> Callable[[Loader], Loader]:
    """Register the function that builds family `family`'s network (an entry of `families.FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} has no entry in detection.families.FAMILIES")

    def register(fn: Loader) -> Loader:
        LOADERS[family] = fn
        return fn
    return register


def load_detector(name: str, spec: DetectorParams, *, dataset_classes: Sequence[str], imgsz: int = 640,
                  device: str | torch.device = "cpu") -> Detector:
    """Build the detector `detection.models[name]` (`spec`) from local files only (nothing is downloaded).

    Args:
        dataset_classes: class names of the evaluation data; models built with random weights predict
            these, and predictions are mapped to them by name.
        imgsz: the letterboxed input size of families that letterbox.
    Raises:
        EdgecompressError: a missing weights file, naming where it was expected.
    """
    family = FAMILIES[spec.family]
    if spec.weights and not Path(spec.weights).is_file():
        hint = ("run the detect_import stage first (it writes this file from the original checkpoint)"
                if family.imported else "put the weights file there, or set weights: null for random weights")
        raise EdgecompressError(f"detection.models.{name}.weights={spec.weights!r} not found: {hint}")
    loaded = LOADERS[spec.family](spec, dataset_classes, fuse=True)
    device = torch.device(device)
    return Detector(name=name, family=spec.family, arch=loaded.arch, model=loaded.model.to(device).eval(),
                    classes=loaded.classes, weights=loaded.weights, imgsz=imgsz, device=device)


def unfused_network(detector: Detector) -> nn.Module:
    """The network training and pruning change, on the CPU in eval mode: for a family whose inference
    network is Conv+BN fused (`Family.fused`), rebuilt with its BatchNorm layers from the weights file
    (pruning must see them); otherwise a copy of the detector's own."""
    if not detector.facts.fused:
        return copy.deepcopy(detector.model).cpu().eval()
    spec = DetectorParams(family=detector.family, arch=detector.arch, weights=detector.weights)
    return LOADERS[detector.family](spec, detector.classes, fuse=False).model.eval()


def fuse_network(model: nn.Module) -> nn.Module:
    """Conv+BN folded, as the YOLO code bases run inference (the model's own `fuse`, quietly)."""
    # no_grad: fusing a trained model must not tie the fused weights to an autograd graph
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        return model.fuse().eval()


class RawHead(nn.Module):
    """The detector's raw head tensor only (YOLO heads return (predictions, features) in eval mode):
    what ONNX export, pruning's trace and the compressed variants' model block see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


# ----------------------------------------------------------------------------------------------
# detect_import: the one explicit unpickling of a trusted checkpoint, and the safe file it writes
def _quiet_yolo() -> None:
    for package in ("yolov5", "ultralytics"):
        logging.getLogger(package).setLevel(logging.WARNING)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unpickler_classes(family: str) -> None:
    """Import the package whose classes the family's pickles name (yolov5's puts its `models` on sys.path)."""
    try:
        importlib.import_module(IMPORTS[family].package)
    except ImportError as exc:
        raise EdgecompressError(f"detect_import of {IMPORTS[family].label} weights needs {IMPORTS[family].needs}: "
                                f"{exc}") from None
    _quiet_yolo()


def imported_payload(model: nn.Module, family: str, classes: Sequence[str], source: dict[str, Any]) -> dict[str, Any]:
    """The safe file's content for a YOLO network of an imported family: model config dict, class names,
    strides and state dict (tensors and plain types only: loads with weights_only=True). `model` is made
    float32 in place (checkpoints ship half precision)."""
    state = {k: v.detach().cpu() for k, v in model.float().state_dict().items()}
    return {"format": IMPORTS[family].format, "yaml": copy.deepcopy(model.yaml), "classes": list(classes),
            "stride": [float(s) for s in model.stride], "state_dict": state, "source": source}


def import_checkpoint(source: str | Path, out: str | Path, family: str = "yolov5") -> dict[str, Any]:
    """Unpickle a trusted checkpoint of an imported family (yolov5, ultralytics) once and write it as a
    safe-to-load file (`imported_payload`).

    This is the only place where edgecompress loads a pickle with `weights_only=False`: the file is
    named explicitly by the user (`detection.import.source`), and its sha256 is recorded.

    Returns:
        {"source", "family", "sha256", "out", "classes", "params", "stride"}.
    Raises:
        EdgecompressError: missing file, or a file that is not a detection checkpoint of that family.
    """
    source = Path(source)
    if family not in IMPORTS:
        raise EdgecompressError(f"detection.import.family={family!r} is invalid: allowed: {', '.join(IMPORTS)}")
    label = IMPORTS[family].label
    if not source.is_file():
        raise EdgecompressError(f"detection.import.source={str(source)!r} not found: expected an original {label} "
                                f"checkpoint (e.g. {IMPORTS[family].example}) at that path")
    _unpickler_classes(family)
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=False)  # trusted by the user: see docstring
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types
        raise EdgecompressError(f"{source}: not a loadable {label} checkpoint ({first_line(exc, 160)})") from None
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if model is None or not hasattr(model, "yaml") or not hasattr(model, "names"):
        raise EdgecompressError(f"{source}: not a {label} detection checkpoint (no 'model' with yaml and names)")
    names = model.names
    classes = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    record = {"path": str(source), "sha256": _sha256(source)}
    payload = imported_payload(model, family, classes, record)
    save_torch(out, payload)
    info = {"source": str(source), "family": family, "sha256": record["sha256"], "out": str(out),
            "classes": len(classes), "params": sum(p.numel() for p in model.parameters()), "stride": payload["stride"]}
    log.info("imported %s -> %s (%d classes, %d parameters)", source, out, info["classes"], info["params"])
    return info


def import_yolov5(source: str | Path, out: str | Path) -> dict[str, Any]:
    """`import_checkpoint` of an original YOLOv5 checkpoint."""
    return import_checkpoint(source, out, "yolov5")


def import_ultralytics(source: str | Path, out: str | Path) -> dict[str, Any]:
    """`import_checkpoint` of ultralytics weights (yolov8 / yolo11 ... `.pt`)."""
    return import_checkpoint(source, out, "ultralytics")


def read_imported(path: str | Path, family: str = "yolov5") -> dict[str, Any]:
    """The payload of a file detect_import wrote for `family` (loaded with weights_only=True).

    Raises:
        EdgecompressError: a full pickle (e.g. the original checkpoint itself) or another file, naming
            detect_import as the way in.
    """
    expected = IMPORTS[family].format
    try:
        payload = load_torch(path, f"imported {family} model")
    except EdgecompressError:
        if _names_code(path):
            raise EdgecompressError(f"{path}: a full pickle (it can run code when loaded); only the detect_import "
                                    f"stage reads those: set detection.import.source to this file with "
                                    f"detection.import.family: {family}, and weights to its out file") from None
        raise
    if not isinstance(payload, dict) or payload.get("format") != expected:
        raise EdgecompressError(f"{path}: not a file written by detect_import (format {expected}); "
                                "run the detect_import stage on the original checkpoint")
    return payload


def _names_code(path: str | Path) -> bool:
    """Whether `path` is a pickle naming classes outside torch's safe list (read without unpickling it)."""
    try:
        return bool(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a torch zip file at all
        return False


def _rebuild(payload: dict[str, Any], path: str | Path, build: Callable[[dict, int], nn.Module]) -> nn.Module:
    """`build(config, nc)` with the imported file's state dict loaded strictly, in eval mode."""
    with contextlib.redirect_stdout(io.StringIO()):
        model = build(copy.deepcopy(payload["yaml"]), len(payload["classes"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise EdgecompressError(f"{path}: weights do not fit the network its config builds "
                                f"({first_line(exc, 120)})") from None
    return model.eval()


@loader("yolov5")
def load_yolov5(spec: DetectorParams, dataset_classes: Sequence[str], *, fuse: bool) -> Loaded:
    """The network of an imported YOLOv5 file; Conv+BN fused (as YOLOv5 runs inference) with `fuse`."""
    payload = read_imported(spec.weights, "yolov5")
    from yolov5.models.yolo import DetectionModel

    _quiet_yolo()
    model = _rebuild(payload, spec.weights, lambda cfg, nc: DetectionModel(cfg=cfg, ch=3, nc=nc))
    if fuse:
        model = fuse_network(model)
    return Loaded(model.eval(), list(payload["classes"]), str(spec.weights), spec.arch or Path(spec.weights).stem)


# ----------------------------------------------------------------------------------------------
# ultralytics and torchvision
@loader("ultralytics")
def load_ultralytics(spec: DetectorParams, dataset_classes: Sequence[str], *, fuse: bool) -> Loaded:
    """An imported ultralytics file (detect_import's, or detect_train's output) rebuilt from its model
    config, or the model yaml `arch` with random weights. `YOLO(<.pt>)` is never called: it unpickles."""
    from ultralytics.nn.tasks import DetectionModel

    _quiet_yolo()
    if spec.weights:
        payload = read_imported(spec.weights, "ultralytics")
        model = _rebuild(payload, spec.weights, lambda cfg, nc: DetectionModel(cfg=cfg, nc=nc, verbose=False))
        model.names = dict(enumerate(payload["classes"]))  # what ultralytics' own loader gives (its trainer remaps by it)
        return Loaded(model, list(payload["classes"]), str(spec.weights), spec.arch or Path(spec.weights).stem)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = DetectionModel(cfg=spec.arch, nc=len(dataset_classes), verbose=False)
    except FileNotFoundError:
        raise EdgecompressError(f"arch={spec.arch!r}: no such ultralytics model yaml (e.g. yolov8n.yaml, "
                                "yolo11n.yaml)") from None
    return Loaded(model, list(dataset_classes), RANDOM_WEIGHTS, spec.arch)


@loader("torchvision")
def load_torchvision(spec: DetectorParams, dataset_classes: Sequence[str], *, fuse: bool) -> Loaded:
    """A torchvision COCO detector builder, with a local state dict or random weights."""
    import torchvision.models.detection as tvd

    arch, weights = spec.arch, spec.weights
    if arch not in TORCHVISION_DETECTORS:
        raise EdgecompressError(f"arch={arch!r} is invalid for family torchvision: {', '.join(TORCHVISION_DETECTORS)}")
    # torchvision's COCO detectors predict COCO category ids (91 slots, 0 = background); random ones
    # are built the same way so category ids map to class names identically.
    model = getattr(tvd, arch)(weights=None, weights_backbone=None, num_classes=91)
    if not weights:
        return Loaded(model, list(dataset_classes), RANDOM_WEIGHTS, arch)
    state = load_torch(weights, f"{arch} weights")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EdgecompressError(f"{weights}: does not fit torchvision {arch} with 91 COCO classes "
                                f"({first_line(exc, 120)})") from None
    return Loaded(model, list(dataset_classes), str(weights), arch)
