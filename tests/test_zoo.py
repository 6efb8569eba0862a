"""Offline pretrained models: ImageNet class mapping, weights resolution, preprocessing metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SHARED
from edgecompress import EdgecompressError
from edgecompress import zoo

CLASSES = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great_white_shark")]


def write_classes(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (120, 30, 200)).save(path)


def test_load_imagenet_classes(tmp_path: Path) -> None:
    lines = [f"{i} {wnid} {name}" for i, (wnid, name) in enumerate(CLASSES)]
    assert zoo.load_imagenet_classes(write_classes(tmp_path / "c.txt", lines)) == CLASSES
    with pytest.raises(EdgecompressError, match=r"c2.txt:2: .* is not 'index wnid name'"):
        zoo.load_imagenet_classes(write_classes(tmp_path / "c2.txt", [lines[0], "one n01443537 goldfish"]))
    with pytest.raises(EdgecompressError, match="without gaps"):
        zoo.load_imagenet_classes(write_classes(tmp_path / "c3.txt", [lines[0], lines[2]]))
    with pytest.raises(EdgecompressError, match="class list not found"):
        zoo.load_imagenet_classes(tmp_path / "absent.txt")


def test_subset_maps_wnid_and_index_folders(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    image(root / "n01484850" / "a.JPEG")   # wnid of class 2
    image(root / "n01484850" / "b.JPEG")
    image(root / "1" / "x.png")            # class index folder
    subset = zoo.imagenet_subset(root, CLASSES)
    # round robin: one image per class first, then the second image of class 2
    assert [p.name for p in subset.paths] == ["x.png", "a.JPEG", "b.JPEG"]
    assert subset.targets == (1, 2, 2) and subset.num_classes_present == 2
    capped = zoo.imagenet_subset(root, CLASSES, max_images=2)
    assert capped.targets == (1, 2)
    image(root / "cats" / "c.jpg")
    with pytest.raises(EdgecompressError, match="cats: folder name is neither a WordNet id"):
        zoo.imagenet_subset(root, CLASSES)
    with pytest.raises(EdgecompressError, match="image folder not found"):
        zoo.imagenet_subset(tmp_path / "absent", CLASSES)


def test_missing_weights_message_lists_every_file(tmp_path: Path) -> None:
    with pytest.raises(EdgecompressError) as info:
        zoo.resolve_weights(["resnet18", "squeezenet1_1"], tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "never downloaded" in message
    assert "resnet18 (one of: resnet18-f37072fd.pth)" in message and "squeezenet1_1-" in message
    with pytest.raises(EdgecompressError, match="not a torchvision model"):
        zoo.resolve_weights(["resnet7"], tmp_path)
    with pytest.raises(EdgecompressError, match="weights='imagenet' is invalid"):
        zoo.resolve_weights(["resnet18"], tmp_path, weights="imagenet")


def test_weights_found_in_dir_load_and_carry_their_metadata(tmp_path: Path) -> None:
    from torchvision.models import get_model

    torch.manual_seed(0)
    reference = get_model("squeezenet1_1", weights=None)
    name = zoo.weight_file_names("squeezenet1_1")[-1]
    torch.save(reference.state_dict(), tmp_path / name)
    resolved = zoo.resolve_weights(["squeezenet1_1"], tmp_path)["squeezenet1_1"]
    assert resolved.path == tmp_path / name and "SqueezeNet1_1_Weights" in resolved.label
    model = zoo.load_pretrained(resolved)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model(x), reference.eval()(x))
    assert zoo.published_accuracy(resolved)["top1"] > 50
    (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(EdgecompressError, match=f"{name}: not loadable as squeezenet1_1 weights"):
        zoo.load_pretrained(zoo.resolve_weights(["squeezenet1_1"], tmp_path)["squeezenet1_1"])


def test_random_weights_are_labelled() -> None:
    resolved = zoo.resolve_weights(["resnet18"], None, weights="random")["resnet18"]
    assert resolved.path is None and "random" in resolved.label and zoo.published_accuracy(resolved) is None
    assert zoo.load_pretrained(resolved).fc.out_features == 1000


@pytest.mark.parametrize("arch, resize, interpolation", [("resnet18", 256, "bilinear"),
                                                          ("efficientnet_b0", 256, "bicubic")])
def test_preprocessing_comes_from_weights_metadata(arch: str, resize: int, interpolation: str) -> None:
    transform = zoo.preprocessing(zoo.resolve_weights([arch], None, weights="random")[arch])
    assert transform.resize_size == [resize] and transform.crop_size == [224]
    assert transform.interpolation.value == interpolation
    assert transform(Image.new("RGB", (300, 280))).shape == (3, 224, 224)


IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason=f"{IMAGENET_SAMPLE} not present (developer/CI data only)")
def test_real_pretrained_mobilenet_v2_on_imagenet_sample() -> None:
    try:
        resolved = zoo.resolve_weights(["mobilenet_v2"], IMAGENET_SAMPLE / "no-weights-here")["mobilenet_v2"]
    except EdgecompressError as exc:
        pytest.skip(f"no local mobilenet_v2 weights: {exc}")
    classes = zoo.load_imagenet_classes(IMAGENET_SAMPLE / "classes.txt")
    subset = zoo.imagenet_subset(IMAGENET_SAMPLE, classes, max_images=60)
    assert subset.num_classes_present == 60
    accuracy = zoo.topk_accuracy(zoo.load_pretrained(resolved), subset, zoo.preprocessing(resolved))
    # published top-1 72%; 60 images put a wide band around it, but a wrong class mapping gives ~0
    assert accuracy["top1"] >= 0.55 and accuracy["top5"] >= accuracy["top1"]


def test_benchmark_model_random_weights_on_tiny_tree(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for wnid, _ in CLASSES:
        image(root / wnid / "a.JPEG")
    subset = zoo.imagenet_subset(root, CLASSES)
    resolved = zoo.resolve_weights(["squeezenet1_1"], None, weights="random")["squeezenet1_1"]
    result = zoo.benchmark_model(resolved, subset, batch_sizes=(1, 2), warmup=1, repeats=3)
    assert "random" in result["weights"] and result["published"] is None and result["size_mb"] is None
    assert 0 <= result["top1"] <= result["top5"] <= 1 and result["images"] == 3
    assert result["params"] > 1e6 and result["macs"] > 1e8 and result["preprocessing"]["crop"] == [224]
    assert set(result["latency_ms"]) == {"1", "2"} and all(t["median"] > 0 for t in result["latency_ms"].values())
