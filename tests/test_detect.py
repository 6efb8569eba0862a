"""Tests of the detectors module: letterbox geometry, YOLO head decoding, the explicit import of YOLOv5
and ultralytics checkpoints (the one unpickling step), local-only loading with clear errors, and
inference through every family (random weights, tiny inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.bench.timing import BlockTimer
from edgecompress.detection.inference import (Letterbox, decode_yolo, letterbox, model_to_dataset_classes,
                                              predict_batch, run_detector, unletterbox)
from edgecompress.detection.models import IMPORTS, import_ultralytics, import_yolov5, load_detector
from edgecompress.detection.families import FAMILIES
from edgecompress.detection.params import DetectorParams

COCO_FIRST = ["person", "bicycle", "car"]


def test_letterbox_keeps_aspect_and_unletterbox_inverts_it() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    tensor, box = letterbox(image, 64)
    assert tensor.shape == (3, 64, 64) and box == Letterbox(scale=0.32, pad_x=0.0, pad_y=16.0, width=200, height=100)
    assert tensor[0, 0, 0] == pytest.approx(114 / 255) and tensor[0, 32, 32] == pytest.approx(1.0)  # pad, image
    original = torch.tensor([[10.0, 20.0, 110.0, 70.0], [-50.0, 0.0, 500.0, 100.0]])
    boxed = original.clone()
    boxed[:, [0, 2]] = boxed[:, [0, 2]] * box.scale + box.pad_x
    boxed[:, [1, 3]] = boxed[:, [1, 3]] * box.scale + box.pad_y
    back = unletterbox(boxed, box)
    torch.testing.assert_close(back[0], original[0])
    assert back[1].tolist() == [0.0, 0.0, 200.0, 100.0]  # clipped to the image


def test_decode_yolo_both_layouts() -> None:
    # YOLOv5: (B, N, 5 + nc) = cx, cy, w, h, objectness, class probabilities; score = obj * cls
    v5 = torch.tensor([[[50.0, 40.0, 20.0, 10.0, 0.5, 0.2, 0.8]]])
    boxes, scores, labels = decode_yolo((v5, None), "yolov5")[0]
    assert boxes.tolist() == [[40.0, 35.0, 60.0, 45.0]] and scores.tolist() == pytest.approx([0.4]) and labels.tolist() == [1]
    # ultralytics: (B, 4 + nc, N) = cx, cy, w, h, class probabilities
    v8 = torch.tensor([[[50.0], [40.0], [20.0], [10.0], [0.3], [0.6]]])
    boxes, scores, labels = decode_yolo((v8, {}), "ultralytics")[0]
    assert boxes.tolist() == [[40.0, 35.0, 60.0, 45.0]] and scores.tolist() == pytest.approx([0.6])
    assert labels.tolist() == [1]
    end2end = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 0.9, 2.0]] * 3])  # (B, max_det, 6): already deduplicated
    assert decode_yolo(end2end, "ultralytics")[0].shape == (3, 6)


def test_class_map_by_name() -> None:
    assert model_to_dataset_classes(["cat", "person", "car"], COCO_FIRST).tolist() == [-1, 0, 2]


def write_yolov5_checkpoint(path: Path) -> Path:
    """An original-format YOLOv5 checkpoint (a pickled model object, as the releases ship) with random weights."""
    import yolov5.models.yolo as yolo

    torch.manual_seed(0)
    model = yolo.DetectionModel(str(Path(yolo.__file__).parent / "yolov5n.yaml"), ch=3, nc=3)
    model.names = list(COCO_FIRST)
    torch.save({"model": model, "epoch": -1}, path)
    return path


def test_import_yolov5_writes_a_safe_file_that_rebuilds_the_same_network(tmp_path: Path) -> None:
    source = write_yolov5_checkpoint(tmp_path / "tiny_v5.pt")
    info = import_yolov5(source, tmp_path / "tiny_v5.safe.pt")
    assert info["classes"] == 3 and info["stride"] == [8.0, 16.0, 32.0] and len(info["sha256"]) == 64
    payload = torch.load(tmp_path / "tiny_v5.safe.pt", weights_only=True)  # no code is unpickled
    assert payload["classes"] == COCO_FIRST and "yaml" in payload
    detector = load_detector("v5", DetectorParams(family="yolov5", weights=str(tmp_path / "tiny_v5.safe.pt")),
                             dataset_classes=COCO_FIRST, imgsz=64)
    original = torch.load(source, weights_only=False)["model"].eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        # the rebuilt model is Conv+BN fused, as YOLOv5 runs inference: equal up to float rounding
        torch.testing.assert_close(detector.model(x)[0], original(x)[0], atol=1e-3, rtol=1e-3)
    assert detector.weights == str(tmp_path / "tiny_v5.safe.pt") and not detector.random_weights


def write_ultralytics_checkpoint(path: Path) -> Path:
    """ultralytics weights as its releases ship them (a pickled half-precision model object), tiny yolov8n, random."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=len(COCO_FIRST), verbose=False)
    model.names = dict(enumerate(COCO_FIRST))
    torch.save({"model": model.half(), "ema": None, "train_args": {}}, path)
    return path


def forbid_full_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, any torch.load with weights_only=False (what `YOLO(<.pt>)` does) fails the test."""
    load = torch.load

    def safe_load(*args, **kwargs):
        assert kwargs.get("weights_only", True), f"full unpickling of {args[:1]} outside detect_import"
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", safe_load)


def test_import_ultralytics_writes_a_safe_file_that_rebuilds_the_same_network(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics import YOLO

    source = write_ultralytics_checkpoint(tmp_path / "tiny_v8.pt")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = YOLO(str(source)).model.float().eval()(x)[0]  # ultralytics' own loader, for reference
    info = import_ultralytics(source, tmp_path / "tiny_v8.safe.pt")
    assert info["family"] == "ultralytics" and info["classes"] == 3 and info["stride"] == [8.0, 16.0, 32.0]
    payload = torch.load(tmp_path / "tiny_v8.safe.pt", weights_only=True)  # no code is unpickled
    assert payload["classes"] == COCO_FIRST and payload["yaml"]["yaml_file"] == "yolov8n.yaml"
    forbid_full_unpickling(monkeypatch)  # from here on, nothing is unpickled
    spec = DetectorParams(family="ultralytics", weights=str(tmp_path / "tiny_v8.safe.pt"))
    detector = load_detector("v8", spec, dataset_classes=["car", "person"], imgsz=64)
    assert detector.classes == COCO_FIRST and detector.model.names == dict(enumerate(COCO_FIRST))
    with torch.no_grad():
        assert torch.equal(detector.model(x)[0], expected)  # the same network, bit for bit


def test_yolo_pickles_given_as_weights_are_refused_in_one_line_naming_detect_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v8 = write_ultralytics_checkpoint(tmp_path / "yolov8n.pt")
    v5 = write_yolov5_checkpoint(tmp_path / "yolov5n.pt")
    import_yolov5(v5, tmp_path / "v5.safe.pt")
    forbid_full_unpickling(monkeypatch)  # before: ultralytics' YOLO(path) unpickled the file here
    for family, path in (("ultralytics", v8), ("yolov5", v5)):
        with pytest.raises(EdgecompressError) as err:
            load_detector("m", DetectorParams(family=family, weights=str(path)), dataset_classes=COCO_FIRST)
        assert str(err.value) == (f"{path}: a full pickle (it can run code when loaded); only the detect_import stage "
                                  f"reads those: set detection.import.source to this file with detection.import.family: "
                                  f"{family}, and weights to its out file")
    # each family's safe file is its own format
    with pytest.raises(EdgecompressError, match=r"v5.safe.pt: not a file written by detect_import \(format "
                                                r"edgecompress-ultralytics-v1\)"):
        load_detector("m", DetectorParams(family="ultralytics", weights=str(tmp_path / "v5.safe.pt")),
                      dataset_classes=COCO_FIRST)


def test_detect_import_reads_exactly_the_imported_families() -> None:
    assert set(IMPORTS) == {name for name, facts in FAMILIES.items() if facts.imported} == {"yolov5", "ultralytics"}


def test_import_and_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(EdgecompressError, match=r"detection.import.source='.*nope.pt' not found: expected an orig"):
        import_yolov5(tmp_path / "nope.pt", tmp_path / "out.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(EdgecompressError, match="not a YOLOv5 detection checkpoint"):
        import_yolov5(tmp_path / "plain.pt", tmp_path / "out.pt")
    with pytest.raises(EdgecompressError, match="plain.pt: not a ultralytics detection checkpoint"):
        import_ultralytics(tmp_path / "plain.pt", tmp_path / "out.pt")
    with pytest.raises(EdgecompressError, match=r"source='.*nope.pt' not found: expected an original ultralytics "
                                                r"checkpoint \(e.g. yolov8n.pt"):
        import_ultralytics(tmp_path / "nope.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(EdgecompressError, match="weights='missing.pt' not found: run the detect_import stage"):
        load_detector("v5", DetectorParams(family="yolov5", weights="missing.pt"), dataset_classes=COCO_FIRST)
    with pytest.raises(EdgecompressError, match="not a file written by detect_import"):
        load_detector("v5", DetectorParams(family="yolov5", weights=str(tmp_path / "plain.pt")),
                      dataset_classes=COCO_FIRST)
    with pytest.raises(EdgecompressError, match="arch='ssd9' is invalid for family torchvision"):
        load_detector("x", DetectorParams(family="torchvision", arch="ssd9", weights=None), dataset_classes=COCO_FIRST)
    with pytest.raises(EdgecompressError, match="no such ultralytics model yaml"):
        load_detector("x", DetectorParams(family="ultralytics", arch="yolo_nope.yaml", weights=None),
                      dataset_classes=COCO_FIRST)


@pytest.mark.parametrize("family, arch", [("ultralytics", "yolov8n.yaml"),
                                          ("torchvision", "ssdlite320_mobilenet_v3_large")])
def test_every_family_runs_and_times_its_blocks(family: str, arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = []
    for i, size in enumerate(((96, 64), (64, 80), (80, 80))):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", size, (30 * i, 90, 160)).save(paths[-1])
    detector = load_detector("m", DetectorParams(family=family, arch=arch, weights=None),
                             dataset_classes=COCO_FIRST, imgsz=64)
    assert detector.random_weights and detector.classes == COCO_FIRST
    preds, timing = run_detector(detector, paths, COCO_FIRST, batch_size=2, conf_threshold=0.0, iou_threshold=0.5,
                                 max_det=5, warmup_batches=1)
    assert len(preds) == 3 and timing["batches"] == 2 and timing["images"] == 3
    for pred, path in zip(preds, paths):
        width, height = Image.open(path).size
        assert len(pred["boxes"]) <= 5 and pred["boxes"].shape[1:] == (4,)
        if len(pred["boxes"]):  # in original pixels, inside the image, labels of the data set
            assert pred["boxes"][:, [0, 2]].max() <= width and pred["boxes"][:, [1, 3]].max() <= height
            assert pred["labels"].max() < len(COCO_FIRST) and pred["labels"].min() >= 0
    blocks = set(timing["blocks"])
    assert {"decode", "preprocess", "model", "postprocess"} <= blocks
    assert ("nms" in blocks) == (family != "torchvision")  # torchvision suppresses inside its forward
    assert timing["total_ms_per_image"] >= timing["inference_ms_per_image"] > 0


def test_predict_batch_drops_classes_the_data_set_lacks() -> None:
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=COCO_FIRST, imgsz=64)
    detector.classes = ["dog", "person", "cat"]  # as if the model knew other classes
    preds = predict_batch(detector, [Image.new("RGB", (64, 64))], timer=BlockTimer(), conf_threshold=0.0,
                          iou_threshold=0.5, max_det=50, class_map=model_to_dataset_classes(detector.classes, COCO_FIRST))
    assert set(preds[0]["labels"].tolist()) <= {0}  # only "person" survives, as data set index 0
