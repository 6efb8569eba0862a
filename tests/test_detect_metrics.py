"""Detection metrics on tiny hand-built data sets: exact mAP/precision values for perfect, shifted,
wrong-class and crowd cases, torchmetrics vs pycocotools agreement, NMS and the drawn PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.detection import metrics as dm
from edgecompress.detection import visualize
from edgecompress.detection.data import DetectionDataset, ImageAnnotation

CLASSES = ["person", "car", "dog"]


def annotation(image_id: int, boxes: list[list[float]], labels: list[int], crowd: list[bool] | None = None,
               size: tuple[int, int] = (320, 240)) -> ImageAnnotation:
    return ImageAnnotation(image_id=image_id, file_name=f"img{image_id}.png", width=size[0], height=size[1],
                           boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
                           labels=np.array(labels, dtype=np.int64),
                           iscrowd=np.array(crowd if crowd is not None else [False] * len(labels), dtype=bool))


def dataset(images: list[ImageAnnotation], images_dir: Path = Path(".")) -> DetectionDataset:
    # COCO-style gapped category ids: the COCO ground truth must use them, torchmetrics the indices.
    return DetectionDataset(images_dir=images_dir, classes=list(CLASSES), images=images, category_ids=[1, 3, 18])


def prediction(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.long)}


def perfect(image: ImageAnnotation) -> dict[str, torch.Tensor]:
    return prediction(image.boxes.tolist(), [1.0] * len(image.labels), image.labels.tolist())


def shifted(image: ImageAnnotation, fraction: float) -> dict[str, torch.Tensor]:
    """Every box moved right by `fraction` of its width, score 1."""
    boxes = image.boxes.copy()
    boxes[:, [0, 2]] += fraction * (boxes[:, 2] - boxes[:, 0])[:, None]
    return prediction(boxes.tolist(), [1.0] * len(boxes), image.labels.tolist())


@pytest.fixture
def two_images() -> DetectionDataset:
    # Sizes span COCO's small (< 32^2), medium and large (> 96^2) area ranges.
    return dataset([
        annotation(7, [[10, 20, 130, 220], [150, 30, 250, 110]], [0, 1]),
        annotation(9, [[40, 40, 64, 70], [100, 60, 300, 230], [200, 10, 260, 60]], [2, 0, 1]),
    ])


def test_perfect_predictions_score_one_everywhere(two_images):
    preds = [perfect(image) for image in two_images.images]
    result = dm.evaluate_detections(two_images, preds)
    tm, coco = result["torchmetrics"], result["pycocotools"]
    assert tm["backend"] == "faster_coco_eval"
    for key in ("map", "map_50", "map_75", "mar_100", "map_small", "map_medium", "map_large"):
        assert tm[key] == 1.0, key
    assert tm["map_per_class"] == {0: 1.0, 1: 1.0, 2: 1.0}
    assert coco == {"map": 1.0, "map_50": 1.0, "map_75": 1.0, "mar_100": 1.0}
    assert result["agreement"]["agree"] is True
    assert result["agreement"]["difference_points"] == {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "mar_100": 0.0}
    assert (result["tp"], result["fp"], result["fn"]) == (5, 0, 0)
    assert result["precision"] == result["recall"] == result["f1"] == 1.0
    assert (result["images"], result["gt_boxes"], result["crowd_boxes"], result["pred_boxes"]) == (2, 5, 0, 5)


def test_shifted_boxes_lower_strict_thresholds_first(two_images):
    # A 10% shift gives IoU 0.9/1.1 = 0.818: a match at IoU 0.50..0.80, a miss at 0.85..0.95.
    small = dm.evaluate_detections(two_images, [shifted(image, 0.1) for image in two_images.images])
    for source in ("torchmetrics", "pycocotools"):
        assert small[source]["map_50"] == pytest.approx(1.0)
        assert small[source]["map_75"] == pytest.approx(1.0)
        assert small[source]["map"] == pytest.approx(0.7, abs=1e-6)  # 7 of 10 IoU thresholds
    assert small["precision"] == 1.0
    # A 60% shift gives IoU 0.4/1.6 = 0.25: no match at any threshold.
    large = dm.evaluate_detections(two_images, [shifted(image, 0.6) for image in two_images.images])
    for source in ("torchmetrics", "pycocotools"):
        assert large[source]["map_50"] == 0.0
        assert large[source]["map"] == 0.0
    assert (large["tp"], large["fp"], large["fn"]) == (0, 5, 5)
    assert large["f1"] == 0.0


def mixed_predictions() -> list[dict[str, torch.Tensor]]:
    """Predictions for `two_images` with hits, false positives, misses and spread scores."""
    return [
        # one hit, a false positive scoring above it, the car missed
        prediction([[12, 22, 128, 215], [200, 150, 300, 230]], [0.6, 0.9], [0, 0]),
        # dog hit loosely, person hit, car with the wrong class, a low-score duplicate person
        prediction([[42, 38, 66, 72], [105, 62, 298, 228], [200, 10, 260, 60], [110, 70, 290, 220]],
                   [0.8, 0.95, 0.7, 0.3], [2, 0, 0, 0]),
    ]


def test_mixed_case_backends_agree(two_images):
    preds = mixed_predictions()
    result = dm.evaluate_detections(two_images, preds)
    tm, coco = result["torchmetrics"], result["pycocotools"]
    # pinned from pycocotools (101-point interpolated precision): 43/101 and 59/101
    assert coco["map"] == pytest.approx(43 / 101) and coco["map_50"] == pytest.approx(59 / 101)
    assert coco["mar_100"] == pytest.approx(0.5)
    assert result["agreement"]["agree"] is True
    for key in dm.AGREEMENT_KEYS:
        assert abs(tm[key] - coco[key]) * 100 <= 0.5
    assert (result["tp"], result["fp"], result["fn"]) == (3, 3, 2)
    assert result["precision"] == 0.5
    assert result["recall"] == 0.6
    assert result["f1"] == pytest.approx(2 * 0.5 * 0.6 / 1.1)


def test_pycocotools_backend_fallback(two_images, monkeypatch):
    preds = mixed_predictions()
    reference = dm.map_torchmetrics(preds, two_images.images, per_class=False)
    real_find_spec = dm.importlib.util.find_spec
    monkeypatch.setattr(dm.importlib.util, "find_spec",
                        lambda name, *args: None if name == "faster_coco_eval" else real_find_spec(name, *args))
    fallback = dm.map_torchmetrics(preds, two_images.images, per_class=False)
    assert fallback["backend"] == "pycocotools"
    assert "map_per_class" not in fallback
    for key in dm.AGREEMENT_KEYS:
        assert fallback[key] == pytest.approx(reference[key], abs=1e-6), key
    monkeypatch.setattr(dm.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(EdgecompressError, match="needs faster-coco-eval or pycocotools"):
        dm.map_torchmetrics(preds, two_images.images)


def test_agreement_flags_mismatch():
    tm = {"map": 0.512, "map_50": 0.7, "map_75": None, "mar_100": 0.6}
    coco = {"map": 0.5, "map_50": 0.7, "map_75": None, "mar_100": 0.6}
    result = dm.agreement(tm, coco, tolerance_points=0.5)
    assert result["difference_points"] == {"map": 1.2, "map_50": 0.0, "map_75": 0.0, "mar_100": 0.0}
    assert result["agree"] is False
    assert dm.agreement(tm, coco, tolerance_points=1.5)["agree"] is True
    assert dm.agreement({"map": 0.5}, {"map": None})["agree"] is False


def test_wrong_class_is_fp_and_fn_crowd_is_neither():
    image = annotation(1, [[10, 10, 110, 110], [150, 20, 300, 200]], [0, 1], crowd=[False, True])
    preds = [prediction([[10, 10, 110, 110], [160, 30, 200, 80]], [0.9, 0.8], [1, 1])]
    result = dm.precision_recall_f1(preds, [image])
    # class 1 on the person box: FP, the person: FN; the detection inside the crowd region: ignored
    assert result == {"tp": 0, "fp": 1, "fn": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    as_dict = {"boxes": torch.tensor(image.boxes), "labels": torch.tensor(image.labels),
               "iscrowd": torch.tensor(image.iscrowd)}
    assert dm.precision_recall_f1(preds, [as_dict]) == result
    # both mAP implementations ignore the crowd region too
    right_class = [prediction([[10, 10, 110, 110], [160, 30, 200, 80]], [0.9, 0.8], [0, 1])]
    result = dm.evaluate_detections(dataset([image]), right_class)
    assert result["torchmetrics"]["map"] == pytest.approx(1.0)
    assert result["pycocotools"]["map"] == pytest.approx(1.0)
    assert result["torchmetrics"]["map_per_class"] == {0: 1.0, 1: None}  # no regular car box: undefined
    assert (result["tp"], result["fp"], result["fn"], result["gt_boxes"], result["crowd_boxes"]) == (1, 0, 0, 1, 1)
    # each ground-truth box is matched once: the second identical detection is an FP
    twice = [prediction([[10, 10, 110, 110]] * 2, [0.9, 0.8], [0, 0])]
    counts = dm.precision_recall_f1(twice, [image])
    assert (counts["tp"], counts["fp"], counts["fn"]) == (1, 1, 0)


def test_nms_suppresses_same_class_only_and_applies_limits():
    boxes = torch.tensor([[0, 0, 100, 100], [5, 5, 105, 105], [0, 0, 100, 100], [200, 200, 260, 260],
                          [300, 0, 340, 40]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1])
    labels = torch.tensor([0, 0, 1, 0, 2])
    kept = dm.nms(boxes, scores, labels, iou_threshold=0.5, conf_threshold=0.25, max_det=300)
    # box 1 overlaps box 0 (same class) and goes; box 2 overlaps too but is another class; box 4 is < conf
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert kept["labels"].tolist() == [0, 1, 0]
    assert torch.equal(kept["boxes"], boxes[[0, 2, 3]])
    top = dm.nms(boxes, scores, labels, iou_threshold=0.5, conf_threshold=0.0, max_det=2)
    assert top["scores"].tolist() == pytest.approx([0.9, 0.7])
    empty = dm.nms(boxes, scores, labels, iou_threshold=0.5, conf_threshold=0.95, max_det=10)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.long
    with pytest.raises(EdgecompressError, match=r"iou_threshold=1.5 is invalid: must be a number in \[0, 1\]"):
        dm.nms(boxes, scores, labels, iou_threshold=1.5, conf_threshold=0.25, max_det=10)
    with pytest.raises(EdgecompressError, match="conf_threshold=-0.1"):
        dm.nms(boxes, scores, labels, iou_threshold=0.5, conf_threshold=-0.1, max_det=10)
    with pytest.raises(EdgecompressError, match="max_det=0"):
        dm.nms(boxes, scores, labels, iou_threshold=0.5, conf_threshold=0.25, max_det=0)


def test_draw_detections_writes_png_and_nothing_on_error(tmp_path, two_images):
    Image.new("RGB", (320, 240), (90, 120, 150)).save(tmp_path / "img7.png")
    Image.new("RGB", (320, 240), (30, 30, 30)).save(tmp_path / "img9.png")
    ds = dataset(two_images.images, images_dir=tmp_path)
    preds = [perfect(image) for image in ds.images]
    written = visualize.write_visualizations(ds, preds, tmp_path / "vis", CLASSES, max_images=1)
    assert written == [tmp_path / "vis" / "img7.png"]
    with Image.open(written[0]) as png:
        assert png.format == "PNG" and png.width > 0 and png.height > 0
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["img7.png"]  # no temporary left over

    out = tmp_path / "missing.png"
    with pytest.raises(EdgecompressError, match=r"detection image .*nope\.png not found"):
        visualize.draw_detections(tmp_path / "nope.png", ds.images[0], preds[0], CLASSES, out)
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    with pytest.raises(EdgecompressError, match=r"corrupt\.png: cannot read image"):
        visualize.draw_detections(tmp_path / "corrupt.png", ds.images[0], preds[0], CLASSES, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".missing.png.*"))


def test_empty_predictions_give_zeros(two_images):
    empty = [prediction([], [], []) for _ in two_images.images]
    result = dm.evaluate_detections(two_images, empty)
    assert result["pycocotools"] == {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "mar_100": 0.0}
    for key in dm.AGREEMENT_KEYS:
        assert result["torchmetrics"][key] == 0.0, key
    assert result["agreement"]["agree"] is True
    assert (result["tp"], result["fp"], result["fn"], result["pred_boxes"]) == (0, 0, 5, 0)
    assert result["precision"] == result["recall"] == result["f1"] == 0.0


def test_length_mismatch_and_bad_label_are_one_line_errors(two_images):
    with pytest.raises(EdgecompressError, match="cover 1 images but the data set has 2"):
        dm.evaluate_detections(two_images, [perfect(two_images.images[0])])
    bad = [prediction([[0, 0, 10, 10]], [0.5], [5]), perfect(two_images.images[1])]
    with pytest.raises(EdgecompressError, match=r"label 5: expected a class index in \[0, 2\]"):
        dm.coco_eval(two_images, bad)
