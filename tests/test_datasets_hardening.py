"""Bad classification data gets one clear line (issue #16): CIFAR pickles cannot run code, a file given
as data.root is named as such, and every unreadable image of a folder is listed in one error."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.data import prepare_dataset
from edgecompress.datasets import DATASETS, _read_pickle


def _prepare(out_dir: Path, name: str, root: Path) -> dict:
    return prepare_dataset(name=name, root=str(root), image_size=8, val_fraction=0.2, test_fraction=0.2,
                           max_samples=None, seed=0, out_dir=out_dir)


# ------------------------------------------------------------------------------------------- CIFAR pickles
class _RunsCommand:
    """Unpickling this runs a shell command: what a hostile "CIFAR" file can do to plain pickle.load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _RunsCommand(f"touch {marker}"), b"labels": [0]}, protocol=2))
    with pytest.raises(EdgecompressError) as err:
        _read_pickle(path)
    message = str(err.value)
    assert re.fullmatch(rf"{re.escape(str(path))}: refused to unpickle (posix|nt|os)\.system: "
                        r"a CIFAR pickle holds only arrays, lists, numbers and bytes", message), message
    assert not marker.exists()


def test_cifar_loader_refuses_a_hostile_meta_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": _RunsCommand(f"touch {marker}")}))
    with pytest.raises(EdgecompressError, match=r"batches\.meta: refused to unpickle .*system: a CIFAR pickle"):
        DATASETS["cifar10"](str(tmp_path), 8)
    assert not marker.exists()


# protocol 2 is what the official CIFAR files use (numpy 1 module paths rewritten in: protocol 2 spells
# module names out unprefixed); the others are what re-saving them with today's Python gives
@pytest.mark.parametrize(("protocol", "numpy1_paths"), [(2, False), (2, True), (pickle.DEFAULT_PROTOCOL, False),
                                                        (pickle.HIGHEST_PROTOCOL, False)])
def test_cifar_layout_pickles_still_load(tmp_path: Path, protocol: int, numpy1_paths: bool) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=(4, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"batch_label": b"training batch 1 of 5", b"labels": [3, 1, 4, 1], b"data": data,
                        b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"], "coarse": np.int64(7)},
                       protocol=protocol)
    if numpy1_paths:  # the official files were written by numpy 1 (module numpy.core, not numpy._core)
        raw = raw.replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "batch").write_bytes(raw)
    loaded = _read_pickle(tmp_path / "batch")
    np.testing.assert_array_equal(loaded[b"data"], data)
    assert loaded[b"labels"] == [3, 1, 4, 1] and loaded[b"filenames"][2] == b"c.png"
    assert loaded[b"coarse"] == 7  # str keys are turned into bytes keys


# ------------------------------------------------------------------------------------------ data.root
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_root_that_is_a_file_is_named_as_a_file(tmp_path: Path, name: str) -> None:
    (tmp_path / "archive.tar.gz").write_bytes(b"\x1f\x8b not a folder")
    with pytest.raises(EdgecompressError, match=rf"^data\.root='.*archive\.tar\.gz' is a file, not a folder; "
                                                rf"{name} expects <root>/") as err:
        _prepare(tmp_path / "out", name, tmp_path / "archive.tar.gz")
    assert "\n" not in str(err.value)
    with pytest.raises(EdgecompressError, match=rf"data\.root='.*nope': not found; {name} expects"):
        _prepare(tmp_path / "out", name, tmp_path / "nope")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- unreadable images
def _jpeg_bytes() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_imagefolder_lists_every_unreadable_image_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), (i, 0, 0)).save(root / name / f"ok{i}.png")
    whole = _jpeg_bytes()
    (root / "ant" / "x.jpg").write_bytes(whole[:len(whole) // 2])  # a JPEG cut short
    (root / "bee" / "y.jpg").write_text("this is text, not a JPEG\n")
    with pytest.raises(EdgecompressError) as err:
        _prepare(tmp_path / "out", "imagefolder", root)
    message = str(err.value)
    assert "\n" not in message
    assert re.fullmatch(rf"data\.root='{re.escape(str(root))}': 2 unreadable image\(s\): "
                        r"ant/x\.jpg \(image file is truncated.*\); bee/y\.jpg \(cannot identify image file\); "
                        r"fix or remove them", message), message
    assert not (tmp_path / "out").exists()


def test_many_unreadable_images_list_the_first_ten_and_count_the_rest(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "cls").mkdir(parents=True)
        Image.new("RGB", (10, 10)).save(tmp_path / split / "cls" / "ok.png")
        for i in range(6):
            (tmp_path / split / "cls" / f"bad{i}.png").write_bytes(b"\x89PNG cut")
    with pytest.raises(EdgecompressError) as err:
        DATASETS["imagefolder"](str(tmp_path), 8)
    message = str(err.value)
    assert "12 unreadable image(s): " in message and message.endswith("; and 2 more; fix or remove them")
    assert message.count("bad") == 10 and "train/cls/bad0.png (" in message and "test/cls/bad0.png (" in message
