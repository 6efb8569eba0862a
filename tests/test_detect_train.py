"""Tests of detector fine-tuning (`edgecompress.detection.train`): the data pipeline, our loop on both of
its families, ultralytics' trainer started from detect_import's safe file (one tiny epoch; the
pipeline smoke test runs it from a yaml), and the saved weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.detection import train as dt
from edgecompress.detection.data import DetectionDataset, ImageAnnotation
from edgecompress.detection.models import import_ultralytics, import_yolov5, load_detector, unfused_network
from edgecompress.detection.params import DetectorParams

from test_detect import COCO_FIRST, forbid_full_unpickling, write_ultralytics_checkpoint, write_yolov5_checkpoint


class RecordingLogger:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = [{}]

    def log_metric(self, name: str, val: float) -> None:
        self.rows[-1][name] = val

    def next_step(self) -> None:
        self.rows.append({})


def tiny_dataset(root: Path) -> DetectionDataset:
    """Two 96x64 images, each with one bright box on a dark background (classes 0 and 2, and one box of
    a class the model lacks in `classes`), plus a crowd box."""
    images = []
    for i, (label, box) in enumerate([(0, (10, 8, 50, 40)), (2, (40, 20, 90, 60))]):
        pixels = np.zeros((64, 96, 3), dtype=np.uint8)
        x1, y1, x2, y2 = box
        pixels[y1:y2, x1:x2] = 230
        Image.fromarray(pixels).save(root / f"{i}.png")
        images.append(ImageAnnotation(i + 1, f"{i}.png", 96, 64, np.array([box, (0, 0, 5, 5), (1, 1, 9, 9)], float),
                                      np.array([label, 3, 0]), np.array([False, False, True])))
    return DetectionDataset(root, [*COCO_FIRST, "unicorn"], images, [1, 2, 3, 99])


def test_dataset_classes_map_to_model_outputs_by_name() -> None:
    mapping = dt.dataset_to_model_classes(["car", "person", "unicorn"], ["person", "bicycle", "car"])
    assert mapping.tolist() == [2, 0, -1]
    # torchvision's COCO label space has empty slots: the first named index is used
    assert dt.dataset_to_model_classes(["person"], ["", "person", ""]).tolist() == [1]


def test_training_items_are_letterboxed_like_inference_and_flip_boxes(tmp_path: Path) -> None:
    ds = tiny_dataset(tmp_path)
    label_map = dt.dataset_to_model_classes(ds.classes, COCO_FIRST)
    plain = dt.DetectionTrainSet(ds, imgsz=48, letterboxed=True, label_map=label_map, hflip=0.0)
    image, boxes, labels = plain[0]
    # 96x64 -> scale 0.5 -> 48x32, padded 8 px top and bottom; crowd and unknown-class boxes are dropped
    assert image.shape == (3, 48, 48) and labels.tolist() == [0]
    torch.testing.assert_close(boxes, torch.tensor([[5.0, 12.0, 25.0, 28.0]]))
    assert plain.dropped_boxes == 2  # the "unicorn" box of each image
    flipped_image, flipped, _ = dt.DetectionTrainSet(ds, imgsz=48, letterboxed=True, label_map=label_map, hflip=1.0)[0]
    torch.testing.assert_close(flipped, torch.tensor([[23.0, 12.0, 43.0, 28.0]]))
    torch.testing.assert_close(flipped_image, image.flip(-1))
    raw, raw_boxes, _ = dt.DetectionTrainSet(ds, imgsz=48, letterboxed=False, label_map=label_map, hflip=0.0)[1]
    assert raw.shape == (3, 64, 96)  # torchvision resizes inside the model
    torch.testing.assert_close(raw_boxes, torch.tensor([[40.0, 20.0, 90.0, 60.0]]))


def test_yolov5_fine_tuning_lowers_the_loss_logs_each_epoch_and_saves_loadable_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ds = tiny_dataset(tmp_path)
    safe = tmp_path / "v5.safe.pt"
    import_yolov5(write_yolov5_checkpoint(tmp_path / "v5.pt"), safe)
    detector = load_detector("v5", DetectorParams(family="yolov5", weights=str(safe)),
                             dataset_classes=ds.classes, imgsz=64)
    detector = replace(detector, model=unfused_network(detector))
    logger, evaluated = RecordingLogger(), []

    def evaluate(d):
        evaluated.append(d.model.training)
        return {"map": 0.1, "map_50": 0.2}

    result = dt.fit_detector(detector, ds, epochs=4, batch_size=2, workers=0, optimizer="sgd", lr=0.01, momentum=0.9,
                             weight_decay=0.0, hflip=0.0, seed=0, evaluate=evaluate, logger=logger)
    history = result["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4] and result["images"] == 2
    assert set(history[0]) >= {"train/loss", "train/box", "train/obj", "train/cls", "val/map", "val/map_50", "lr"}
    assert history[-1]["train/loss"] < history[0]["train/loss"]  # it learns the two boxes
    assert history[1]["lr"] < history[0]["lr"]  # cosine schedule
    assert evaluated == [False] * 4  # evaluated in eval mode after each epoch
    assert logger.rows[0]["train/loss"] == history[0]["train/loss"] and len(logger.rows) == 5
    out = tmp_path / "trained.pt"
    dt.save_trained(detector, out, base=safe)
    payload = torch.load(out, weights_only=True)
    assert payload["source"]["fine_tuned_from"] == str(safe)
    reloaded = load_detector("t", DetectorParams(family="yolov5", weights=str(out)),
                             dataset_classes=ds.classes, imgsz=64)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # the reloaded model is Conv+BN fused: equal up to float rounding
        torch.testing.assert_close(reloaded.model(x)[0], detector.model.eval()(x)[0], atol=1e-3, rtol=1e-3)


def test_torchvision_fine_tuning_trains_with_the_models_own_losses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ds = tiny_dataset(tmp_path)
    ssd = DetectorParams(family="torchvision", arch="ssdlite320_mobilenet_v3_large", weights=None)
    detector = load_detector("ssd", ssd, dataset_classes=ds.classes)
    before = {k: v.clone() for k, v in detector.model.state_dict().items()}
    result = dt.fit_detector(detector, ds, epochs=1, batch_size=2, workers=0, optimizer="adamw", lr=1e-3, momentum=0.9,
                             weight_decay=0.0, hflip=0.5, seed=0)
    row = result["history"][0]
    assert {"train/bbox_regression", "train/classification"} <= set(row) and np.isfinite(row["train/loss"])
    assert any(not torch.equal(before[k], v) for k, v in detector.model.state_dict().items())
    dt.save_trained(detector, tmp_path / "ssd.pt", base="unused")
    reloaded = load_detector("ssd", replace(ssd, weights=str(tmp_path / "ssd.pt")), dataset_classes=ds.classes)
    assert all(torch.equal(v, reloaded.model.state_dict()[k]) for k, v in detector.model.state_dict().items())


def test_our_loop_trains_ultralytics_networks_with_their_own_loss(tmp_path: Path) -> None:
    """How detect_compress fine-tunes a pruned ultralytics network (ultralytics' trainer would rebuild
    the unpruned one from its yaml)."""
    torch.manual_seed(0)
    detector = load_detector("y8", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=COCO_FIRST, imgsz=64)
    result = dt.fit_detector(detector, tiny_dataset(tmp_path), epochs=3, batch_size=2, workers=0, optimizer="adamw",
                             lr=1e-3, momentum=0.9, weight_decay=0.0, hflip=0.0, seed=0)
    history = result["history"]
    assert {"train/box", "train/cls", "train/dfl"} <= set(history[0])
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert not detector.model.training


def test_ultralytics_trainer_starts_from_the_safe_file_and_writes_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `YOLO(<weights .pt>)` unpickled the start, and the output was ultralytics' last.pt (a pickle)."""
    import ultralytics.engine.trainer as engine

    safe = tmp_path / "v8.safe.pt"
    import_ultralytics(write_ultralytics_checkpoint(tmp_path / "v8.pt"), safe)
    (tmp_path / "images").mkdir()
    ds = tiny_dataset(tmp_path / "images")
    detector = load_detector("v8", DetectorParams(family="ultralytics", weights=str(safe)), dataset_classes=ds.classes,
                             imgsz=64)
    started, build = [], dt._ultralytics_trainer

    def recording_build(*args, **kwargs):
        trainer = build(*args, **kwargs)
        started.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return trainer

    monkeypatch.setattr(dt, "_ultralytics_trainer", recording_build)
    check_amp = engine.check_amp
    forbid_full_unpickling(monkeypatch)
    out = tmp_path / "trained" / "v8.pt"
    run = dt.train_detector(detector, ds, ds, out, settings={**TRAIN, "epochs": 1, "batch_size": 2}, seed=0,
                            evaluate=lambda d: {})
    assert run.trainer == "ultralytics DetectionTrainer" and [row["epoch"] for row in run.result["history"]] == [1]
    imported = detector.model.state_dict()  # the start is the imported network (the class head remapped by name)
    assert torch.equal(started[0]["model.0.conv.weight"], imported["model.0.conv.weight"])
    payload = torch.load(out, weights_only=True)  # the output is detect_import's safe format, not last.pt
    assert payload["format"] == "edgecompress-ultralytics-v1" and payload["classes"] == ds.classes
    assert payload["source"] == {"fine_tuned_from": str(safe)}
    assert run.detector.classes == ds.classes and engine.check_amp is check_amp


TRAIN = {"batch_size": 2, "workers": 0, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
         "hflip": 0.0, "freeze_batchnorm": True}


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgecompressError, match="optimizer='lamb' is invalid: allowed: sgd, adamw"):
        dt.make_optimizer([torch.nn.Parameter(torch.zeros(1))], "lamb", lr=0.1, momentum=0.9, weight_decay=0.0)
    empty = replace(tiny_dataset(tmp_path), images=[])
    v5 = tmp_path / "v5.safe.pt"
    import_yolov5(write_yolov5_checkpoint(tmp_path / "v5.pt"), v5)
    tv = load_detector("v5", DetectorParams(family="yolov5", weights=str(v5)), dataset_classes=COCO_FIRST, imgsz=64)
    with pytest.raises(EdgecompressError, match="training split is empty"):
        dt.fit_detector(tv, empty, epochs=1, batch_size=1, workers=0, optimizer="sgd", lr=0.1, momentum=0.9,
                        weight_decay=0.0, hflip=0.0, seed=0)


def test_the_stage_records_a_skip_when_every_source_image_is_evaluated(tmp_path: Path) -> None:
    """subset_images: null evaluates the whole source: detect_train then has nothing to train on, and
    says so in its metrics instead of failing the pipeline (its outputs still exist for DVC)."""
    import json
    import subprocess
    import sys

    import yaml

    from edgecompress.detection.source import write_subset

    ds = tiny_dataset(tmp_path)
    write_subset(ds, tmp_path / "subset")
    write_subset(replace(ds, images=[]), tmp_path / "train")
    params = {"detection": {"models": {"v5": {"family": "yolov5", "weights": "unused.pt"}},
                            "compress": {"model": "v5"}, "train": {"model": "v5"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = Path(__file__).parents[1] / "stages" / "detect_train.py"
    done = subprocess.run([sys.executable, str(stage), "--params", "params.yaml", "--data", "subset", "--train-data",
                           "train", "--out-dir", "trained", "--metrics", "train.json", "--live", "live"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["model"] == "v5" and "every source image is in the evaluation subset" in metrics["skipped"]
    assert (tmp_path / "trained").is_dir() and (tmp_path / "live" / "plots" / "metrics").is_dir()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_batchnorm_keeps_the_running_statistics(tmp_path: Path, freeze: bool) -> None:
    safe = tmp_path / "v5.safe.pt"
    import_yolov5(write_yolov5_checkpoint(tmp_path / "v5.pt"), safe)
    detector = load_detector("v5", DetectorParams(family="yolov5", weights=str(safe)),
                             dataset_classes=COCO_FIRST, imgsz=64)
    detector = replace(detector, model=unfused_network(detector))
    norms = [m for m in detector.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    scales = [m.weight.detach().clone() for m in norms]
    # one step; a large rate because a random model's BatchNorm gradients are ~1e-7 here
    dt.fit_detector(detector, tiny_dataset(tmp_path), epochs=1, batch_size=2, workers=0, optimizer="sgd", lr=10.0,
                    momentum=0.0, weight_decay=0.0, hflip=0.0, seed=0, freeze_batchnorm=freeze)
    unchanged = all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert unchanged == freeze
    assert any(not torch.equal(s, m.weight) for s, m in zip(scales, norms))  # scale and shift still train


def test_fine_tuning_repeats_itself_with_the_same_seed(tmp_path: Path) -> None:
    safe = tmp_path / "v5.safe.pt"
    import_yolov5(write_yolov5_checkpoint(tmp_path / "v5.pt"), safe)
    states = []
    for _ in range(2):
        torch.manual_seed(123 + len(states))  # a different global state before each run: the seed must win
        detector = load_detector("v5", DetectorParams(family="yolov5", weights=str(safe)), dataset_classes=COCO_FIRST,
                                 imgsz=64)
        detector = replace(detector, model=unfused_network(detector))
        dt.fit_detector(detector, tiny_dataset(tmp_path), epochs=2, batch_size=1, workers=0, optimizer="sgd", lr=0.01,
                        momentum=0.9, weight_decay=0.0, hflip=0.5, seed=7)
        states.append(detector.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
