"""Tests for edgecompress.data: prepare (digits, CIFAR pickles, imagefolder), errors, loaders."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.data import (
    load_meta,
    load_split,
    make_loader,
    normalize_transform,
    prepare_dataset,
)

from edgecompress.datasets import _load_image, dataset_names

SPLITS = ("train", "val", "test")


def _prepare(out_dir: Path, **overrides) -> dict:
    params = dict(name="digits", root=None, image_size=32, val_fraction=0.15, test_fraction=0.15,
                  max_samples=None, seed=0, out_dir=out_dir)
    params.update(overrides)
    return prepare_dataset(**params)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    _prepare(out)
    return out


# ---------------------------------------------------------------------------------------------- digits
def test_digits_splits_shapes_and_meta(digits_dir: Path) -> None:
    meta = load_meta(digits_dir)
    assert meta["name"] == "digits" and meta["num_classes"] == 10 and meta["split_source"] == "carved"
    assert meta["classes"] == [str(i) for i in range(10)]
    assert sum(meta["splits"].values()) == 1797
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert all(0 < v < 1 for v in meta["mean"] + meta["std"])
    overall = np.zeros(10)
    for split in SPLITS:
        images, labels = load_split(digits_dir, split)
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        assert labels.dtype == torch.int64 and len(labels) == meta["splits"][split]
        assert torch.bincount(labels, minlength=10).tolist() == meta["class_counts"][split]
        overall += np.bincount(labels.numpy(), minlength=10)
    # stratification: each class's share in every split is within 2 points of its overall share
    overall_share = overall / overall.sum()
    for split in SPLITS:
        share = np.asarray(meta["class_counts"][split]) / meta["splits"][split]
        assert np.abs(share - overall_share).max() < 0.02, split
    # mean/std are those of the train split in [0, 1]
    train = load_split(digits_dir, "train")[0].double() / 255
    assert np.allclose(meta["mean"], train.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(meta["std"], train.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-5)


def test_digits_splits_disjoint(tmp_path: Path) -> None:
    # Digits holds duplicate images, so compare multisets: at image_size=8 (no resize) the splits
    # together hold every original image exactly once.
    from sklearn.datasets import load_digits

    _prepare(tmp_path, image_size=8)
    stored = Counter(img[0].numpy().tobytes() + bytes([int(lab)])
                     for split in SPLITS for img, lab in zip(*load_split(tmp_path, split)))
    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    original = Counter(img.tobytes() + bytes([int(lab)]) for img, lab in zip(pixels, digits.target))
    assert stored == original and sum(stored.values()) == 1797


def test_digits_deterministic_and_seed_dependent(digits_dir: Path, tmp_path: Path) -> None:
    _prepare(tmp_path / "same")
    _prepare(tmp_path / "other", seed=1)
    for split in SPLITS:
        a_img, a_lab = load_split(digits_dir, split)
        b_img, b_lab = load_split(tmp_path / "same", split)
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert not torch.equal(load_split(digits_dir, "test")[0], load_split(tmp_path / "other", "test")[0])


def test_digits_max_samples_and_size(tmp_path: Path) -> None:
    meta = _prepare(tmp_path, max_samples=200, image_size=8)
    assert sum(meta["splits"].values()) == 200 and meta["max_samples"] == 200
    assert all(min(meta["class_counts"][s]) > 0 for s in SPLITS)
    assert load_split(tmp_path, "val")[0].shape[1:] == (3, 8, 8)


# ----------------------------------------------------------------------------------------------- CIFAR
def _write_pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle)


def _cifar_batch(labels: list[int], label_key: bytes) -> dict:
    # pixel (0,0) of the red plane encodes the label so image/label pairing can be checked
    data = np.random.default_rng(len(labels)).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels
    return {b"data": data, label_key: list(labels), b"batch_label": b"testing"}


def _write_cifar10(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_pickle(folder / f"data_batch_{i}", _cifar_batch([c for c in range(10)] * 2, b"labels"))
    _write_pickle(folder / "test_batch", _cifar_batch(list(range(10)) * 2, b"labels"))
    _write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_pickles(tmp_path: Path, point_at_folder: bool) -> None:
    _write_cifar10(tmp_path / "raw" / "cifar-10-batches-py")
    root = tmp_path / "raw" / ("cifar-10-batches-py" if point_at_folder else "")
    meta = _prepare(tmp_path / "out", name="cifar10", root=str(root), val_fraction=0.2)
    assert meta["classes"] == [f"c{i}" for i in range(10)] and meta["split_source"] == "predefined"
    assert meta["splits"] == {"train": 80, "val": 20, "test": 20}
    assert meta["class_counts"]["val"] == [2] * 10 and meta["class_counts"]["test"] == [2] * 10
    for split in SPLITS:
        images, labels = load_split(tmp_path / "out", split)
        assert images.shape[1:] == (3, 32, 32)
        assert torch.equal(images[:, 0, 0, 0].long(), labels)


def test_cifar100_pickles_and_resize(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_pickle(folder / "train", _cifar_batch(list(range(100)) * 5, b"fine_labels"))
    _write_pickle(folder / "test", _cifar_batch(list(range(100)), b"fine_labels"))
    _write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    meta = _prepare(tmp_path / "out", name="cifar100", root=str(tmp_path), val_fraction=0.2,
                    image_size=16)
    assert meta["num_classes"] == 100 and meta["classes"][7] == "f7"
    assert meta["splits"] == {"train": 400, "val": 100, "test": 100}
    assert min(meta["class_counts"]["val"]) == 1
    assert load_split(tmp_path / "out", "test")[0].shape == (100, 3, 16, 16)


# ----------------------------------------------------------------------------------------- imagefolder
COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}
SIZES = [(16, 16), (20, 12), (12, 30), (24, 24), (9, 17)]


def _write_tree(root: Path, per_class: int, ext: str = ".png") -> None:
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", SIZES[i % len(SIZES)], colour).save(root / name / f"img{i}{ext}")


def _check_colours(out: Path) -> None:
    for split in SPLITS:
        images, labels = load_split(out, split)
        assert images.shape[1:] == (3, 12, 12)
        colours = torch.tensor(list(COLOURS.values()), dtype=torch.uint8)
        diff = images[:, :, 6, 6].int() - colours[labels].int()
        assert diff.abs().max() <= 3  # JPEG is lossy


def test_imagefolder_carved(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", 10)
    meta = _prepare(tmp_path / "out", name="imagefolder", root=str(tmp_path / "tree"), image_size=12,
                    val_fraction=0.2, test_fraction=0.2)
    assert meta["classes"] == ["ant", "bee", "cat"] and meta["split_source"] == "carved"
    assert meta["splits"] == {"train": 18, "val": 6, "test": 6}
    assert all(counts == [2, 2, 2] for s, counts in meta["class_counts"].items() if s != "train")
    _check_colours(tmp_path / "out")


@pytest.mark.parametrize("val_dir", [None, "valid"])
def test_imagefolder_predefined(tmp_path: Path, val_dir: str | None) -> None:
    _write_tree(tmp_path / "tree" / "train", 6, ext=".JPG")
    _write_tree(tmp_path / "tree" / "test", 2)
    if val_dir:
        _write_tree(tmp_path / "tree" / val_dir, 1)
    meta = _prepare(tmp_path / "out", name="imagefolder", root=str(tmp_path / "tree"), image_size=12,
                    val_fraction=0.3)
    assert meta["split_source"] == "predefined"
    expected = {"train": 18, "val": 3, "test": 6} if val_dir else {"train": 12, "val": 6, "test": 6}
    assert meta["splits"] == expected
    _check_colours(tmp_path / "out")


def test_load_image_center_crops_non_square(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (15, 0, 45, 20))  # white middle band, black sides
    img.save(tmp_path / "wide.png")
    out = _load_image(tmp_path / "wide.png", 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert int(out.min()) == 255  # the black sides were cropped away


# ---------------------------------------------------------------------------------------------- errors
def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(EdgecompressError, match=r"data\.root='.*nope': not found; cifar10 expects "
                                                r"<root>/cifar-10-batches-py/"):
        _prepare(tmp_path / "out", name="cifar10", root=str(tmp_path / "nope"))
    with pytest.raises(EdgecompressError, match="data.root=None"):
        _prepare(tmp_path / "out", name="imagefolder", root=None)
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(EdgecompressError, match=r"missing .*train; cifar100 expects"):
        _prepare(tmp_path / "out", name="cifar100", root=str(tmp_path))


def test_imagefolder_errors(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree", 10)
    (tmp_path / "tree" / "dog").mkdir()
    with pytest.raises(EdgecompressError, match=r"dog: class folder holds no images"):
        _prepare(tmp_path / "o", name="imagefolder", root=str(tmp_path / "tree"))
    (tmp_path / "tree" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(EdgecompressError,
                       match=r"1 unreadable image\(s\): dog/broken\.png \(cannot identify image file\)"):
        _prepare(tmp_path / "o", name="imagefolder", root=str(tmp_path / "tree"))
    (tmp_path / "tree" / "dog" / "broken.png").unlink()
    Image.new("RGB", (8, 8)).save(tmp_path / "tree" / "dog" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "tree" / "dog" / "b.png")
    with pytest.raises(EdgecompressError, match=r"class 'dog' has 2 image\(s\)"):
        _prepare(tmp_path / "o", name="imagefolder", root=str(tmp_path / "tree"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgecompressError, match="no class folders"):
        _prepare(tmp_path / "o", name="imagefolder", root=str(tmp_path / "empty"))


@pytest.mark.parametrize(("overrides", "pattern"), [
    ({"name": "mnist"}, r"data\.name='mnist' is invalid: allowed: digits, "),
    ({"val_fraction": 0.0}, r"data\.val_fraction=0\.0"),
    ({"test_fraction": 1.5}, r"data\.test_fraction=1\.5"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1"),
    ({"image_size": 4}, r"data\.image_size=4 is invalid: must be an integer >= 8"),
    ({"max_samples": 0}, r"data\.max_samples=0"),
    ({"max_samples": 5}, r"data\.max_samples=5 is invalid: .*classes \(10\)"),
])
def test_parameter_errors(tmp_path: Path, overrides: dict, pattern: str) -> None:
    with pytest.raises(EdgecompressError, match=pattern):
        _prepare(tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists()


def test_failed_prepare_keeps_previous_outputs(digits_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _prepare(out, max_samples=100, image_size=8)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _write_tree(tmp_path / "tree", 10)
    (tmp_path / "tree" / "cat" / "zz_broken.png").write_bytes(b"\x89PNG truncated")  # loaded last
    with pytest.raises(EdgecompressError, match="zz_broken.png"):
        _prepare(out, name="imagefolder", root=str(tmp_path / "tree"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgecompressError, match="meta.json: file not found"):
        load_meta(tmp_path)
    with pytest.raises(EdgecompressError, match="split='dev'"):
        load_split(tmp_path, "dev")
    (tmp_path / "val.pt").write_bytes(b"garbage")
    with pytest.raises(EdgecompressError, match="val.pt: cannot load"):
        load_split(tmp_path, "val")


# --------------------------------------------------------------------------------------------- loaders
AUG = {"hflip": True, "crop_padding": 4, "color_jitter": 0.4, "rotation": 15}


def _first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return next(iter(loader))


def test_train_loader_is_seeded(digits_dir: Path) -> None:
    make = lambda seed: make_loader(digits_dir, "train", batch_size=16, train=True, seed=seed,  # noqa: E731
                                    augment=AUG, max_samples=64)
    x1, y1 = _first_batch(make(3))
    x2, y2 = _first_batch(make(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    _, y3 = _first_batch(make(4))
    assert not torch.equal(y1, y3)


def test_eval_loader_normalised(digits_dir: Path) -> None:
    meta = load_meta(digits_dir)
    loader = make_loader(digits_dir, "test", batch_size=32, train=False, seed=0, augment=AUG)
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == meta["splits"]["test"]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    images, labels = load_split(digits_dir, "test")
    assert torch.equal(y, labels[:32])  # no shuffle
    expected = normalize_transform(meta)(images[:32].float() / 255)
    assert torch.allclose(x, expected)  # and no augmentation
    small = make_loader(digits_dir, "val", batch_size=7, train=False, seed=0, max_samples=10)
    assert [len(y) for _, y in small] == [7, 3]


def test_augmentation_changes_images(digits_dir: Path) -> None:
    plain = make_loader(digits_dir, "train", batch_size=16, train=True, seed=1, max_samples=64)
    aug = make_loader(digits_dir, "train", batch_size=16, train=True, seed=1, max_samples=64,
                      augment=AUG)
    xp, yp = _first_batch(plain)
    xa, ya = _first_batch(aug)
    assert torch.equal(yp, ya)  # same shuffle order
    assert not torch.allclose(xp, xa)
    with pytest.raises(EdgecompressError, match="train.augment.blur is not a known parameter"):
        make_loader(digits_dir, "train", batch_size=4, train=True, seed=0, augment={"blur": 1})


def test_random_erasing(digits_dir: Path) -> None:
    meta = load_meta(digits_dir)
    plain = make_loader(digits_dir, "train", batch_size=16, train=True, seed=1, max_samples=64)
    erased = make_loader(digits_dir, "train", batch_size=16, train=True, seed=1, max_samples=64,
                         augment={"random_erasing": 1.0})
    xp, yp = _first_batch(plain)
    xe, ye = _first_batch(erased)
    assert torch.equal(yp, ye)
    # p=1: every image has a rectangle set to 0 (before normalisation), the rest untouched
    zero = normalize_transform(meta)(torch.zeros(3, 1, 1)).view(1, 3, 1, 1)
    changed = ~torch.isclose(xp, xe)
    assert changed.flatten(1).any(dim=1).all()
    assert torch.allclose(xe[changed], zero.expand_as(xe)[changed])
    for bad in (1.5, -0.1):
        with pytest.raises(EdgecompressError, match=rf"train\.augment\.random_erasing={bad} is invalid"):
            make_loader(digits_dir, "train", batch_size=4, train=True, seed=0, augment={"random_erasing": bad})


def test_dataset_names() -> None:
    assert dataset_names() == ["digits", "cifar10", "cifar100", "imagefolder"]
