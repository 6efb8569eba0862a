"""Detection data formats: loaders against hand-computed boxes, writer/loader round trips, subsets."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.detection.data import DetectionDataset, ImageAnnotation, subset, summary, to_targets
from edgecompress.detection.formats import (load_coco, load_voc, load_yolo, read_class_names, write_class_names,
                                            write_coco, write_voc, write_yolo)
from edgecompress.detection.source import load_dataset

COCO128 = Path(__file__).resolve().parents[2] / "shared/data/coco128"
SIZES = {"a.jpg": (64, 48), "b.png": (40, 40), "c.jpg": (30, 20)}  # file -> (width, height)


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in SIZES.items():
        Image.new("RGB", size, (90, 120, 30)).save(folder / name)
    return folder


def coco_json(crowd: bool = True) -> dict:
    """Category ids 90, 1, 3 (unsorted, with gaps); c.jpg has no annotations."""
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [0.5, 1.25, 12.75, 8.5], "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [2.2, 3.3, 17.1, 20.9], "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
    ]
    if crowd:
        annotations.append({"id": 5, "image_id": 3, "category_id": 3, "bbox": [1, 2, 30, 30], "iscrowd": 1})
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 3, "file_name": "b.png", "width": 40, "height": 40},
                   {"id": 12, "file_name": "c.jpg", "width": 30, "height": 20}],
        "annotations": annotations,
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }


def write_coco_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def assert_same_images(first: list[ImageAnnotation], second: list[ImageAnnotation]) -> None:
    assert [(i.image_id, i.file_name, i.width, i.height) for i in first] == \
           [(i.image_id, i.file_name, i.width, i.height) for i in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.iscrowd, b.iscrowd)


def test_coco_load_converts_boxes_and_round_trips(tmp_path, images_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_coco(write_coco_json(tmp_path / "instances.json", coco_json()), images_dir)
    assert "skipped 1 box" in caplog.text
    assert ds.classes == ["person", "car", "toothbrush"] and ds.category_ids == [1, 3, 90]
    a, b, c = ds.images
    assert (a.image_id, a.file_name, a.width, a.height) == (7, "a.jpg", 64, 48)
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 35], [0.5, 1.25, 13.25, 9.75]])
    np.testing.assert_array_equal(a.labels, [1, 2])
    np.testing.assert_allclose(b.boxes, [[2.2, 3.3, 19.3, 24.2], [1, 2, 31, 32]], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(b.iscrowd, [False, True])
    assert c.boxes.shape == (0, 4) and c.boxes.dtype == np.float64
    assert c.labels.dtype == np.int64 and c.iscrowd.dtype == bool and len(c.labels) == len(c.iscrowd) == 0

    write_coco(ds, tmp_path / "out" / "written.json")
    written = json.loads((tmp_path / "out" / "written.json").read_text())
    assert written["categories"] == [{"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                                     {"id": 90, "name": "toothbrush"}]
    first = written["annotations"][0]
    assert first == {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 30.0],
                     "area": 600.0, "iscrowd": 0}
    assert [ann["iscrowd"] for ann in written["annotations"]] == [0, 0, 0, 1]
    again = load_coco(tmp_path / "out" / "written.json", images_dir)
    assert again.classes == ds.classes and again.category_ids == ds.category_ids
    assert_same_images(ds.images, again.images)


def test_coco_errors_are_one_line(tmp_path, images_dir):
    with pytest.raises(EdgecompressError, match=r"missing\.json not found: expected instances_\*\.json") as err:
        load_coco(tmp_path / "missing.json", images_dir)
    assert "\n" not in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgecompressError, match="bad.json: not valid JSON"):
        load_coco(tmp_path / "bad.json", images_dir)
    data = coco_json()
    data["annotations"][0]["category_id"] = 5
    with pytest.raises(EdgecompressError, match="annotation id 1 has category_id 5"):
        load_coco(write_coco_json(tmp_path / "cat.json", data), images_dir)


VOC_XML = """<annotation>
  <folder>VOC2007</folder><filename>a.jpg</filename>
  <size><width>64</width><height>48</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
  <object><name>cat</name><difficult>1</difficult>
    <bndbox><xmin>5</xmin><ymin>7</ymin><xmax>64</xmax><ymax>48</ymax></bndbox></object>
</annotation>
"""


def test_voc_one_based_coordinates_and_lossless_round_trip(tmp_path, images_dir):
    voc = tmp_path / "Annotations"
    voc.mkdir()
    (voc / "a.xml").write_text(VOC_XML)
    # <size> missing: the size comes from the image header
    (voc / "b.xml").write_text("<annotation><filename>b.png</filename><object><name>dog</name>"
                               "<bndbox><xmin>3</xmin><ymin>4</ymin><xmax>40</xmax><ymax>39</ymax></bndbox>"
                               "</object></annotation>")
    ds = load_voc(voc, images_dir)
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [1, 2]
    a, b = ds.images
    assert (a.image_id, a.file_name, a.width, a.height, b.image_id, b.width, b.height) == (1, "a.jpg", 64, 48, 2, 40, 40)
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 20], [4, 6, 64, 48]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    np.testing.assert_array_equal(a.iscrowd, [False, True])
    np.testing.assert_array_equal(b.boxes, [[2, 3, 40, 39]])

    write_voc(ds, tmp_path / "out")
    text = (tmp_path / "out" / "a.xml").read_text()
    assert "<xmin>1</xmin>" in text and "<xmax>10</xmax>" in text and "<difficult>1</difficult>" in text
    again = load_voc(tmp_path / "out", images_dir, classes=ds.classes)
    assert again.classes == ds.classes
    assert_same_images(ds.images, again.images)


def test_voc_unknown_class_names_file_and_name(tmp_path, images_dir):
    (tmp_path / "a.xml").write_text(VOC_XML)
    with pytest.raises(EdgecompressError, match=r"a\.xml: object name 'cat' is not one of the 1 classes"):
        load_voc(tmp_path, images_dir, classes=["dog"])


def test_yolo_normalised_boxes_missing_labels_and_round_trip(tmp_path, images_dir):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n\n0 0.1 0.2 0.1 0.2\n")
    (labels / "c.txt").write_text("1 0.5 0.5 1 1\n")
    ds = load_yolo(labels, images_dir, ["person", "car"])
    assert [(i.image_id, i.file_name, i.width, i.height) for i in ds.images] == \
           [(1, "a.jpg", 64, 48), (2, "b.png", 40, 40), (3, "c.jpg", 30, 20)]
    a, b, c = ds.images
    # cx 0.5 * 64 = 32, w 0.25 * 64 = 16 -> x 24..40; cy 0.5 * 48 = 24, h 0.5 * 48 = 24 -> y 12..36
    np.testing.assert_allclose(a.boxes, [[24, 12, 40, 36], [3.2, 4.8, 9.6, 14.4]], rtol=0, atol=1e-6 * 64)
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert b.num_boxes == 0 and b.boxes.shape == (0, 4)
    np.testing.assert_allclose(c.boxes, [[0, 0, 30, 20]], rtol=0, atol=1e-6 * 30)

    write_yolo(ds, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "c.txt"]
    assert (tmp_path / "out" / "a.txt").read_text().splitlines()[0] == "1 0.5 0.5 0.25 0.5"
    again = load_yolo(tmp_path / "out", images_dir, ds.classes)
    for first, second in zip(ds.images, again.images):
        np.testing.assert_allclose(first.boxes, second.boxes, rtol=0, atol=1e-6 * first.width)
        np.testing.assert_array_equal(first.labels, second.labels)


def test_yolo_bad_lines_name_file_and_line(tmp_path, images_dir):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(EdgecompressError, match=r"a\.txt:2: class index 2 out of range, expected 0\.\.1"):
        load_yolo(tmp_path, images_dir, ["person", "car"])
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(EdgecompressError, match=r"a\.txt:1: 4 fields, expected 5"):
        load_yolo(tmp_path, images_dir, ["person", "car"])


def test_write_yolo_drops_crowd_boxes_and_stale_files(tmp_path, images_dir, caplog):
    ds = load_coco(write_coco_json(tmp_path / "i.json", coco_json()), images_dir)
    out = tmp_path / "labels"
    out.mkdir()
    (out / "c.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # from an earlier run; c.jpg has no boxes now
    with caplog.at_level(logging.WARNING):
        write_yolo(ds, out)
    assert "dropped 1 crowd box" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    assert len((out / "b.txt").read_text().splitlines()) == 1


def test_coco_to_yolo_to_coco_keeps_boxes(tmp_path, images_dir):
    ds = load_coco(write_coco_json(tmp_path / "i.json", coco_json(crowd=False)), images_dir)
    write_yolo(ds, tmp_path / "labels")
    write_class_names(ds, tmp_path / "data.yaml")
    via_yolo = load_yolo(tmp_path / "labels", images_dir, read_class_names(tmp_path / "data.yaml"))
    write_coco(via_yolo, tmp_path / "back.json")
    back = {image.file_name: image for image in load_coco(tmp_path / "back.json", images_dir).images}
    for image in ds.images:
        np.testing.assert_allclose(back[image.file_name].boxes, image.boxes, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(back[image.file_name].labels, image.labels)


def test_class_names_files(tmp_path):
    ds = DetectionDataset(tmp_path, ["person", "traffic light", "yes"], [], [1, 2, 3])
    for name in ("data.yaml", "names.txt"):
        write_class_names(ds, tmp_path / name)
        assert read_class_names(tmp_path / name) == ["person", "traffic light", "yes"]
    (tmp_path / "list.yaml").write_text("path: x\nnames: [a, b]\n")
    assert read_class_names(tmp_path / "list.yaml") == ["a", "b"]
    (tmp_path / "gap.yaml").write_text("names: {0: a, 2: b}\n")
    with pytest.raises(EdgecompressError, match=r"gap\.yaml: names has keys \[0, 2\], expected the integers 0\.\.1"):
        read_class_names(tmp_path / "gap.yaml")


def fake_dataset(count: int) -> DetectionDataset:
    images = [ImageAnnotation(i + 1, f"{i:02d}.jpg", 10, 10, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
              for i in range(count)]
    return DetectionDataset(Path("x"), ["a"], images, [1])


def test_subset_is_seeded_ordered_and_checked():
    ds = fake_dataset(20)
    ids = [image.image_id for image in subset(ds, 5, seed=0).images]
    assert ids == [image.image_id for image in subset(ds, 5, seed=0).images]
    assert ids != [image.image_id for image in subset(ds, 5, seed=1).images]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert len(subset(ds, None, seed=0)) == 20 and len(ds) == 20
    with pytest.raises(EdgecompressError, match="subset size 21 is not possible: the data set has 20 images"):
        subset(ds, 21, seed=0)


def test_load_dataset_dispatch_and_missing_paths(tmp_path, images_dir):
    write_coco_json(tmp_path / "instances.json", coco_json())
    ds = load_dataset("coco", root=tmp_path, annotations="instances.json", images="images")
    assert len(ds) == 3 and ds.classes == ["person", "car", "toothbrush"]
    with pytest.raises(EdgecompressError, match="detection.data.format='kitti' is not supported"):
        load_dataset("kitti", root=tmp_path)
    with pytest.raises(EdgecompressError, match=r"detection\.data\.annotations=nope\.json not found at .*nope\.json: "
                                                r"expected a COCO instances_\*\.json") as err:
        load_dataset("coco", root=tmp_path, annotations="nope.json", images="images")
    assert "\n" not in str(err.value)
    with pytest.raises(EdgecompressError, match=r"detection\.data\.labels=labels not found"):
        load_dataset("yolo", root=tmp_path, images="images", classes=["a"])
    with pytest.raises(EdgecompressError, match=r"detection\.data\.classes=names\.txt not found"):
        load_dataset("yolo", root=tmp_path, images="images", labels="images", classes="names.txt")
    with pytest.raises(EdgecompressError, match=r"detection\.data\.annotations=Annotations not found"):
        load_dataset("voc", root=tmp_path, images="images")
    with pytest.raises(EdgecompressError, match=r"detection\.data\.root=.*nowhere not found"):
        load_dataset("coco", root=tmp_path / "nowhere", annotations="instances.json")


def test_summary_and_targets(tmp_path, images_dir):
    ds = load_coco(write_coco_json(tmp_path / "i.json", coco_json()), images_dir)
    assert summary(ds) == {"images": 3, "boxes": 4, "crowd_boxes": 1, "images_without_boxes": 1, "classes": 3,
                           "classes_present": 3, "boxes_per_class": {"person": 1, "car": 2, "toothbrush": 1}}
    targets = to_targets(ds)
    assert len(targets) == 3
    assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64
    assert torch.equal(targets[1]["iscrowd"], torch.tensor([0, 1]))
    assert targets[2]["boxes"].shape == (0, 4)


@pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared data {COCO128} not present")
def test_coco128_json_and_yolo_labels_agree():
    coco = load_dataset("coco", root=COCO128, annotations="annotations/instances_train2017.json",
                        images="images/train2017")
    yolo = load_yolo(COCO128 / "labels/train2017", COCO128 / "images/train2017", coco.classes)
    assert len(coco) == len(yolo) == 128
    assert summary(coco)["boxes"] == 939 and summary(coco)["crowd_boxes"] == 10
    by_name = {image.file_name: image for image in yolo.images}
    assert set(by_name) == {image.file_name for image in coco.images}  # json file_names are the jpg names
    for image in coco.images:
        other = by_name[image.file_name]
        assert (other.width, other.height) == (image.width, image.height)
        keep = ~image.iscrowd
        assert other.num_boxes == int(keep.sum())
        for label in np.unique(image.labels[keep]):
            ours = image.boxes[keep & (image.labels == label)]
            theirs = list(other.boxes[other.labels == label])
            for box in ours:  # greedy match: the nearest unused box of the same class
                nearest = min(range(len(theirs)), key=lambda j: np.abs(theirs[j] - box).max())
                np.testing.assert_allclose(theirs.pop(nearest), box, rtol=0, atol=1.0)
    # the YOLO copy lacks labels for two images that the json also leaves without (non-crowd) boxes
    assert sorted(i.file_name for i in yolo.images if i.num_boxes == 0) == ["000000000250.jpg", "000000000508.jpg"]


# ------------------------------------------------------------------------------ bad input (issue #16)
def test_coco_non_numeric_values_name_annotation_and_value(tmp_path, images_dir):
    data = coco_json()
    data["annotations"][1]["bbox"][2] = "abc"
    with pytest.raises(EdgecompressError) as err:
        load_coco(write_coco_json(tmp_path / "i.json", data), images_dir)
    assert re.fullmatch(r".*i\.json: annotation id 2 \(image id 7\) bbox value is 'abc', expected a finite number",
                        str(err.value)), str(err.value)
    data = coco_json()
    data["annotations"][0]["bbox"][0] = None
    with pytest.raises(EdgecompressError, match=r"annotation id 1 \(image id 7\) bbox value is None"):
        load_coco(write_coco_json(tmp_path / "i.json", data), images_dir)
    data = coco_json()
    data["images"][1]["width"] = "wide"
    with pytest.raises(EdgecompressError, match=r"i\.json: image id 3 width is 'wide', expected a finite number"):
        load_coco(write_coco_json(tmp_path / "i.json", data), images_dir)


def test_voc_non_numeric_box_names_image_object_and_value(tmp_path, images_dir):
    (tmp_path / "a.xml").write_text(VOC_XML.replace("<xmin>5</xmin>", "<xmin>abc</xmin>"))
    with pytest.raises(EdgecompressError) as err:
        load_voc(tmp_path, images_dir)
    assert re.fullmatch(r".*a\.xml: image a\.jpg object 2 <xmin> is 'abc', expected a finite number",
                        str(err.value)), str(err.value)


@pytest.mark.parametrize(("line", "pattern"), [
    ("0 0.5 abc 0.1 0.1", r"a\.txt:2: cy is 'abc', expected a finite number"),
    ("0 0.5 0.5 nan 0.1", r"a\.txt:2: w is 'nan', expected a finite number"),  # float() takes it
    ("0 0.5 0.5 0.1 inf", r"a\.txt:2: h is 'inf', expected a finite number"),
    ("x 0.5 0.5 0.1 0.1", r"a\.txt:2: class is 'x', expected an integer"),
])
def test_yolo_bad_values_name_file_line_and_value(tmp_path, images_dir, line, pattern):
    (tmp_path / "a.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(EdgecompressError, match=pattern) as err:
        load_yolo(tmp_path, images_dir, ["person", "car"])
    assert "\n" not in str(err.value)


def test_coco_images_missing_on_disk_are_all_named(tmp_path, images_dir):
    (images_dir / "a.jpg").unlink()
    (images_dir / "c.jpg").unlink()
    with pytest.raises(EdgecompressError) as err:
        load_coco(write_coco_json(tmp_path / "i.json", coco_json()), images_dir)
    assert re.fullmatch(r".*i\.json: 2 listed image\(s\) not found under .*images: a\.jpg, c\.jpg",
                        str(err.value)), str(err.value)


def test_voc_images_missing_on_disk_are_all_named(tmp_path, images_dir):
    (tmp_path / "ann").mkdir()
    for name in ("x", "y"):  # y has no <size>: before, its size lookup raised on the first missing image
        xml = VOC_XML.replace("a.jpg", f"{name}.jpg")
        (tmp_path / "ann" / f"{name}.xml").write_text(xml if name == "x" else re.sub(r"<size>.*</size>", "", xml))
    (tmp_path / "ann" / "z.xml").write_text(VOC_XML)  # a.jpg exists
    with pytest.raises(EdgecompressError, match=r"ann: 2 listed image\(s\) not found under .*images: "
                                                r"x\.jpg \(x\.xml\), y\.jpg \(y\.xml\)$"):
        load_voc(tmp_path / "ann", images_dir)


def test_write_subset_names_every_missing_image_and_writes_nothing(tmp_path, images_dir):
    from edgecompress.detection.source import write_subset

    ds = load_coco(write_coco_json(tmp_path / "i.json", coco_json()), images_dir)
    many = [ImageAnnotation(100 + i, f"gone{i:02d}.jpg", 10, 10, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
            for i in range(12)]
    ds.images += many
    (images_dir / "b.png").unlink()
    with pytest.raises(EdgecompressError) as err:
        write_subset(ds, tmp_path / "subset")
    message = str(err.value)
    assert re.fullmatch(r"the data set to write to .*subset: 13 listed image\(s\) not found under .*images: "
                        r"b\.png, gone00\.jpg, .*, gone08\.jpg and 3 more", message), message
    assert not (tmp_path / "subset").exists()


def test_skipped_boxes_warning_names_them(tmp_path, images_dir, caplog):
    data = coco_json()
    data["annotations"] += [{"id": 100 + i, "image_id": 12, "category_id": 1, "bbox": [1, 1, 5, -2], "iscrowd": 0}
                            for i in range(11)]
    with caplog.at_level(logging.WARNING):
        load_coco(write_coco_json(tmp_path / "i.json", data), images_dir)
    assert re.search(r"i\.json: skipped 12 box\(es\) with zero or negative width/height "
                     r"\(annotation ids 4, 100, 101, 102, 103, 104, 105, 106, 107, 108 and 2 more\)", caplog.text)
    caplog.clear()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0 0.1\n")
    with caplog.at_level(logging.WARNING):
        load_yolo(tmp_path / "labels", images_dir, ["person"])
    assert "skipped 1 box(es) with zero or negative width/height (label lines a.txt:2)" in caplog.text
    caplog.clear()
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "a.xml").write_text(VOC_XML.replace("<xmax>64</xmax>", "<xmax>3</xmax>"))
    with caplog.at_level(logging.WARNING):
        load_voc(tmp_path / "voc", images_dir)
    assert "skipped 1 box(es) with zero or negative width/height (objects a.xml #2)" in caplog.text
