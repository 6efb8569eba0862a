"""Offline pretrained models: ImageNet class mapping, weights resolution, preprocessing metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from torch import nn

from conftest import SHARED
from edgecompress import EdgecompressError, weights
from edgecompress.zoo import imagenet, measure

CLASSES = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great_white_shark")]


def write_classes(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (120, 30, 200)).save(path)


def test_load_imagenet_classes(tmp_path: Path) -> None:
    lines = [f"{i} {wnid} {name}" for i, (wnid, name) in enumerate(CLASSES)]
    assert imagenet.load_imagenet_classes(write_classes(tmp_path / "c.txt", lines)) == CLASSES
    with pytest.raises(EdgecompressError, match=r"c2.txt:2: .* is not 'index wnid name'"):
        imagenet.load_imagenet_classes(write_classes(tmp_path / "c2.txt", [lines[0], "one n01443537 goldfish"]))
    with pytest.raises(EdgecompressError, match="without gaps"):
        imagenet.load_imagenet_classes(write_classes(tmp_path / "c3.txt", [lines[0], lines[2]]))
    with pytest.raises(EdgecompressError, match="class list not found"):
        imagenet.load_imagenet_classes(tmp_path / "absent.txt")


def test_subset_maps_wnid_and_index_folders(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    image(root / "n01484850" / "a.JPEG")   # wnid of class 2
    image(root / "n01484850" / "b.JPEG")
    image(root / "1" / "x.png")            # class index folder
    subset = imagenet.imagenet_subset(root, CLASSES)
    # round robin: one image per class first, then the second image of class 2
    assert [p.name for p in subset.paths] == ["x.png", "a.JPEG", "b.JPEG"]
    assert subset.targets == (1, 2, 2) and subset.num_classes_present == 2
    capped = imagenet.imagenet_subset(root, CLASSES, max_images=2)
    assert capped.targets == (1, 2)
    image(root / "cats" / "c.jpg")
    with pytest.raises(EdgecompressError, match="cats: folder name is neither a WordNet id"):
        imagenet.imagenet_subset(root, CLASSES)
    with pytest.raises(EdgecompressError, match="image folder not found"):
        imagenet.imagenet_subset(tmp_path / "absent", CLASSES)


def test_missing_weights_message_lists_every_file(tmp_path: Path) -> None:
    with pytest.raises(EdgecompressError) as info:
        weights.resolve_weights(["resnet18", "squeezenet1_1"], tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "never downloaded" in message
    assert "resnet18 (one of: resnet18-f37072fd.pth)" in message and "squeezenet1_1-" in message
    with pytest.raises(EdgecompressError, match="not a torchvision model"):
        weights.resolve_weights(["resnet7"], tmp_path)
    with pytest.raises(EdgecompressError, match="weights='imagenet' is invalid"):
        weights.resolve_weights(["resnet18"], tmp_path, weights="imagenet")


def test_weights_found_in_dir_load_and_carry_their_metadata(tmp_path: Path) -> None:
    from torchvision.models import get_model

    torch.manual_seed(0)
    reference = get_model("squeezenet1_1", weights=None)
    name = weights.weight_file_names("squeezenet1_1")[-1]
    torch.save(reference.state_dict(), tmp_path / name)
    resolved = weights.resolve_weights(["squeezenet1_1"], tmp_path)["squeezenet1_1"]
    assert resolved.path == tmp_path / name and "SqueezeNet1_1_Weights" in resolved.label
    model = weights.load_pretrained(resolved)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model(x), reference.eval()(x))
    assert weights.published_accuracy(resolved)["top1"] > 50
    (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(EdgecompressError, match=f"{name}: not loadable as squeezenet1_1 weights"):
        weights.load_pretrained(weights.resolve_weights(["squeezenet1_1"], tmp_path)["squeezenet1_1"])


def test_random_weights_are_labelled() -> None:
    resolved = weights.resolve_weights(["resnet18"], None, weights="random")["resnet18"]
    assert resolved.path is None and "random" in resolved.label and weights.published_accuracy(resolved) is None
    model = weights.load_pretrained(resolved)
    assert model.fc.out_features == 1000
    assert torch.equal(model.fc.weight, weights.load_pretrained(resolved).fc.weight)  # same random network each time


@pytest.mark.parametrize("arch, resize, interpolation", [("resnet18", 256, "bilinear"),
                                                          ("efficientnet_b0", 256, "bicubic")])
def test_preprocessing_comes_from_weights_metadata(arch: str, resize: int, interpolation: str) -> None:
    transform = weights.preprocessing(weights.resolve_weights([arch], None, weights="random")[arch])
    assert transform.resize_size == [resize] and transform.crop_size == [224]
    assert transform.interpolation.value == interpolation
    assert transform(Image.new("RGB", (300, 280))).shape == (3, 224, 224)


def tiny_tree(root: Path, per_class: int = 2) -> Path:
    for wnid, _ in CLASSES:
        for k in range(per_class):
            image(root / wnid / f"{k}.JPEG")
    return root


def test_evaluation_and_calibration_images_are_disjoint(tmp_path: Path) -> None:
    subset = imagenet.imagenet_subset(tiny_tree(tmp_path / "imgs"), CLASSES)
    evaluation, calibration, gate = imagenet.evaluation_and_calibration(subset, max_images=3, calibration_images=2)
    assert evaluation.paths == subset.paths[:3] and calibration == subset.paths[3:5] and gate == ()
    assert evaluation.num_classes_present == 3 and not set(evaluation.paths) & set(calibration)
    with pytest.raises(EdgecompressError, match="2 calibration images are needed beyond the 5 evaluation images, "
                                                "but only 1 are left of 6"):
        imagenet.evaluation_and_calibration(subset, max_images=5, calibration_images=2)


def test_gate_images_follow_the_calibration_images_and_overlap_nothing(tmp_path: Path) -> None:
    subset = imagenet.imagenet_subset(tiny_tree(tmp_path / "imgs"), CLASSES)
    evaluation, calibration, gate = imagenet.evaluation_and_calibration(subset, 3, calibration_images=2,
                                                                        gate_images=1)
    assert gate == subset.paths[5:6]
    assert not set(gate) & (set(evaluation.paths) | set(calibration))
    with pytest.raises(EdgecompressError, match="2 calibration images and zoo.gate_images = 2 gate images are needed "
                                                "beyond the 3 evaluation images, but only 3 are left of 6"):
        imagenet.evaluation_and_calibration(subset, 3, calibration_images=2, gate_images=2)


def test_default_class_list_is_torchvision_order() -> None:
    classes = imagenet.default_imagenet_classes()
    assert len(classes) == 1000 and classes[0][0] == "n01440764" and classes[-1][0] == "n15075141"
    assert [wnid for wnid, _ in classes] == sorted(wnid for wnid, _ in classes)  # torchvision index = sorted wnid


def test_fidelity_and_interval() -> None:
    reference = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert measure.fidelity(reference, reference) == {"top1_agreement": 1.0, "sqnr_db": float("inf")}
    flipped = measure.fidelity(reference, reference.flip(1))
    assert flipped["top1_agreement"] == 0.0 and flipped["sqnr_db"] < 0
    low, high = measure.accuracy_interval(82, 100)
    assert 0.72 < low < 0.82 < high < 0.90
    assert measure.accuracy_interval(0, 3)[0] == 0.0


TINY = measure.Measurement(batch_sizes=(1, 2), warmup=0, repeats=3, eval_batch_size=2)


def test_dynamic_quantizes_linear_and_reports_conv_float() -> None:
    torch.manual_seed(0)
    resolved = weights.resolve_weights(["mobilenet_v3_small"], None, "random")["mobilenet_v3_small"]
    model = weights.load_pretrained(resolved)
    images, targets = torch.randn(3, 3, 64, 64), (1, 2, 3)
    result = measure.dynamic_analysis(model, images, targets, TINY)
    linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert result["layers"]["quantized_layers"] == {"Linear": linear} and linear > 0  # changed
    assert result["layers"]["float_layers"] == {"Conv2d": convs}  # reported as float
    assert "Conv2d" in result["note"] and "only nn.Linear" in result["note"]
    assert result["size_mb"] < measure.state_dict_mb(model)
    assert set(result["latency_ms"]) == {"1", "2"} and 0 <= result["top1"] <= result["top5"] <= 1
    convs_only = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()  # 8 "classes"
    none = measure.dynamic_analysis(convs_only, images, (0, 1, 2), TINY)  # e.g. squeezenet: no Linear at all
    assert none["layers"]["quantized"] == 0 and none["layers"]["float_layers"] == {"Conv2d": 1}


class DataDependent(nn.Module):
    """Control flow on a tensor value: FX symbolic tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_static_quantizes_per_config_and_skips_untraceable() -> None:
    torch.manual_seed(0)
    images, calibration, targets = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32), (0, 1, 2, 3)
    traceable = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    results = measure.static_analysis(traceable.eval(), images, targets, calibration, TINY, configs=("x86", "custom"),
                                  calibration_batch_size=2, batch_size=2)
    for name in ("x86", "custom"):
        assert results[name]["layers"]["float"] == 0 and results[name]["layers"]["quantized"] == 2
        assert set(results[name]["latency_ms"]) == {"2"} and results[name]["calibration_images"] == 2
        assert 0 <= results[name]["top1_agreement"] <= 1 and results[name]["sqnr_db"] > 10
    assert results["custom"]["qconfig"] == "custom" and results["custom"]["engine"] == "x86"
    skipped = measure.static_analysis(DataDependent().eval(), images, targets, calibration, TINY, configs=("fbgemm",),
                                  calibration_batch_size=2, batch_size=2)
    assert skipped["fbgemm"]["skipped"].startswith("FX graph-mode static quantization (fbgemm) failed (TraceError")


def test_zoo_params_are_validated() -> None:
    from edgecompress.config import parse_settings
    from edgecompress.zoo.params import ZooPipelineParams

    def build(zoo_block: dict) -> None:
        parse_settings(ZooPipelineParams, {"zoo": zoo_block})

    with pytest.raises(EdgecompressError, match=r"zoo.models.resnet7='pretrained' is invalid: not a torchvision"):
        build({"models": {"resnet7": "pretrained"}})
    with pytest.raises(EdgecompressError, match=r"zoo.models.resnet18='imagenet' is invalid: allowed: pretrained, random"):
        build({"models": {"resnet18": "imagenet"}})
    with pytest.raises(EdgecompressError, match=r"zoo.static_batch_size=3 is invalid: must be one of zoo.batch_sizes"):
        build({"static_batch_size": 3})
    with pytest.raises(EdgecompressError, match=r"zoo.static=\['x86', 'arm'\] is invalid"):
        build({"static": ["x86", "arm"]})
    with pytest.raises(EdgecompressError, match=r"zoo.max_imgs is not a known parameter"):
        build({"max_imgs": 3})


IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=f"{IMAGENET_SAMPLE} not present (developer/CI data only)")
def test_real_pretrained_mobilenet_v2_and_fx_int8_on_imagenet_sample() -> None:
    """The real torchvision MobileNetV2 weights on 250 of the 500 images (the class mapping is checked on all
    500): top-1 >= 70% (published 71.9%; a wrong class mapping gives ~0). FX static INT8 (custom QConfig, 32
    calibration images) on the 218 images calibration did not see: the issue's goal is within 2 points of
    FP32; PTQ of MobileNetV2 measured 2-4 points here (the zoo report states the goal as not met when so),
    so this checks a band that only a broken quantization misses: within 6 points and >= 85% top-1
    agreement. 250 images and one FP32 pass keep it cheap (33-51 s on all 500 with three passes; ~10 s now)."""
    try:
        resolved = weights.resolve_weights(["mobilenet_v2"], IMAGENET_SAMPLE / "no-weights-here")["mobilenet_v2"]
    except EdgecompressError as exc:
        pytest.skip(f"no local mobilenet_v2 weights: {exc}")
    classes = imagenet.load_imagenet_classes(IMAGENET_SAMPLE / "classes.txt")
    assert [wnid for wnid, _ in classes] == [wnid for wnid, _ in imagenet.default_imagenet_classes()]
    subset = imagenet.imagenet_subset(IMAGENET_SAMPLE, classes)
    assert len(subset.paths) == 500 and subset.num_classes_present == 500
    model = weights.load_pretrained(resolved)
    evaluation, calibration, _ = imagenet.evaluation_and_calibration(subset, 218, 32)
    images = imagenet.load_images(evaluation.paths + calibration, weights.preprocessing(resolved))
    logits = measure.predict_all(measure.inference_predict(model), images, 50)
    targets = torch.tensor(evaluation.targets + subset.targets[218:250])
    fp32 = measure.topk_from_logits(logits, targets, (1, 5))
    assert fp32["top1"] >= 0.70 and fp32["top5"] >= fp32["top1"]

    int8 = measure.static_analysis(model, images[:218], evaluation.targets, images[218:], TINY, configs=("custom",),
                                   calibration_batch_size=32, batch_size=1)["custom"]
    fp32_held_out = measure.topk_from_logits(logits[:218], targets[:218], (1,))["top1"]
    assert int8["layers"]["float"] == 0 and len(calibration) == 32
    assert abs(int8["top1"] - fp32_held_out) <= 0.06, (int8["top1"], fp32_held_out)
    assert int8["top1_agreement"] >= 0.85


def test_benchmark_model_random_weights_on_tiny_tree(tmp_path: Path) -> None:
    subset = imagenet.imagenet_subset(tiny_tree(tmp_path / "imgs", per_class=1), CLASSES)
    resolved = weights.resolve_weights(["squeezenet1_1"], None, weights="random")["squeezenet1_1"]
    images = imagenet.ImageCache().get(subset.paths, weights.preprocessing(resolved))
    result = measure.benchmark_model(resolved, images, subset.targets, TINY)
    assert "random" in result["weights"] and result["random_weights"] and result["published"] is None
    assert 0 <= result["top1"] <= result["top5"] <= 1 and result["images"] == 3 and result["size_mb"] > 4
    assert result["params"] > 1e6 and result["macs"] > 1e8 and result["preprocessing"]["crop"] == [224]
    assert set(result["latency_ms"]) == {"1", "2"} and all(t["median"] > 0 for t in result["latency_ms"].values())
    low, high = result["top1_interval95"]
    assert low <= result["top1"] <= high


def test_image_cache_decodes_once_per_transform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subset = imagenet.imagenet_subset(tiny_tree(tmp_path / "imgs", per_class=1), CLASSES)
    calls = []
    monkeypatch.setattr(imagenet, "load_images",
                        lambda paths, transform: calls.append(paths) or torch.zeros(len(paths)))
    cache = imagenet.ImageCache()
    same = [weights.preprocessing(weights.resolve_weights([a], None, "random")[a]) for a in ("resnet18", "resnet34")]
    other = weights.preprocessing(weights.resolve_weights(["efficientnet_b0"], None, "random")["efficientnet_b0"])
    for transform in (*same, other):
        cache.get(subset.paths, transform)
    assert len(calls) == 2  # resnet18 and resnet34 share resize 256 / crop 224 / bilinear
