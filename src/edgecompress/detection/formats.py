"""Object-detection data sets in COCO, Pascal VOC and YOLO (ultralytics txt) formats, offline.

Every loader returns one in-memory `data.DetectionDataset`; every writer is the inverse of its loader
and writes each file atomically. Boxes are xyxy in absolute pixels (float64) and labels a contiguous
class index: COCO categories sorted by category id give indices 0..K-1, which for COCO's 80 classes is
exactly the ultralytics/YOLO class order, so YOLO labels and model outputs agree.

Conventions per format:
- COCO: bbox is xywh in pixels; `iscrowd` regions are kept (evaluation ignores them). Written areas
  are box areas (w * h), since segmentations are not kept.
- VOC: pixel coordinates are 1-based inclusive, so x1 = xmin - 1, y1 = ymin - 1, x2 = xmax,
  y2 = ymax (and the writer adds the 1 back). `difficult="1"` objects become crowd boxes: COCO-style
  evaluation ignores both the same way.
- YOLO: `class cx cy w h` normalised by the image size, one txt per image with the image's stem;
  an image without a txt has no objects. YOLO has no crowd flag, so `write_yolo` drops crowd boxes.
VOC and YOLO sources have no image ids: images get a running id from 1 in sorted file order (COCO
ids start at 1, and pycocotools' evaluator mistakes an annotation id 0 for "unmatched").
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from PIL import Image

from edgecompress import EdgecompressError
from edgecompress.detection.data import DetectionDataset, ImageAnnotation, check_images_exist, first_items
from edgecompress.io import read_json, write_json, write_text

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
YOLO_DIGITS = 8  # significant digits of written YOLO floats: < 1e-5 px error on a 4k image


def _annotation(image_id: int, file_name: str, width: int, height: int,
                boxes: list[list[float]], labels: list[int], crowd: list[bool]) -> ImageAnnotation:
    return ImageAnnotation(image_id, file_name, int(width), int(height),
                           np.array(boxes, dtype=np.float64).reshape(-1, 4),
                           np.array(labels, dtype=np.int64), np.array(crowd, dtype=bool))


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise EdgecompressError(f"{what} folder {path} not found")


def _warn_skipped(skipped: list[Any], source: Path, kind: str) -> None:
    """One warning naming the skipped boxes (first few), so they can be found and fixed."""
    if skipped:
        logger.warning("%s: skipped %d box(es) with zero or negative width/height (%s %s)", source, len(skipped),
                       kind, first_items(skipped))


def _number(value: Any, where: str) -> float:
    """`value` as a finite float, or one error line naming `where` it comes from and the value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise EdgecompressError(f"{where} is {value!r}, expected a finite number")
    return number


def _coco_image(image: dict, source: Path) -> tuple[str, int, int]:
    """(file_name, width, height) of a COCO image entry, checked."""
    where = f"{source}: image id {image.get('id')}"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        raise EdgecompressError(f"{where} has file_name {image.get('file_name')!r}, expected an image path")
    width, height = (int(_number(image.get(key), f"{where} {key}")) for key in ("width", "height"))
    return image["file_name"], width, height


# ----------------------------------------------------------------------------------------------
# COCO
def load_coco(annotation_file: str | Path, images_dir: str | Path) -> DetectionDataset:
    """Load a COCO `instances_*.json` (parsed with pycocotools); images keep the file's order.

    Boxes with w <= 0 or h <= 0 are skipped (named in a warning); images without annotations
    are kept with no boxes. Every listed image must be a file under `images_dir`.
    """
    from pycocotools.coco import COCO

    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise EdgecompressError(f"coco annotation file {annotation_file} not found: expected instances_*.json from COCO")
    data = read_json(annotation_file)
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "categories")):
        raise EdgecompressError(f"{annotation_file}: not a COCO annotation file "
                                "(expected a JSON object with 'images' and 'categories' lists)")
    data.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise EdgecompressError(f"{annotation_file}: malformed COCO entry (missing or bad key {exc})") from None

    category_ids = sorted(coco.cats)
    index_of = {cat_id: index for index, cat_id in enumerate(category_ids)}
    images, skipped = [], []
    for image in data["images"]:
        file_name, width, height = _coco_image(image, annotation_file)
        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(image["id"], []):
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise EdgecompressError(f"{annotation_file}: annotation id {ann.get('id')} has bbox {bbox!r}, "
                                        "expected [x, y, width, height]")
            if ann.get("category_id") not in index_of:
                raise EdgecompressError(f"{annotation_file}: annotation id {ann.get('id')} has category_id "
                                        f"{ann.get('category_id')!r}, not one of the file's categories")
            where = f"{annotation_file}: annotation id {ann.get('id')} (image id {image['id']}) bbox value"
            x, y, w, h = (_number(v, where) for v in bbox)
            if w <= 0 or h <= 0:
                skipped.append(ann.get("id"))
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(index_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        images.append(_annotation(image["id"], file_name, width, height, boxes, labels, crowd))
    _warn_skipped(skipped, annotation_file, "annotation ids")
    classes = [str(coco.cats[cat_id]["name"]) for cat_id in category_ids]
    ds = DetectionDataset(Path(images_dir), classes, images, category_ids)
    check_images_exist(ds, annotation_file)
    return ds


def write_coco(ds: DetectionDataset, path: str | Path) -> None:
    """Write `ds` as a COCO annotation file (bbox xywh, area = w * h, annotation ids from 1)."""
    images, annotations = [], []
    for image in ds.images:
        images.append({"id": int(image.image_id), "file_name": image.file_name,
                       "width": int(image.width), "height": int(image.height)})
        for (x1, y1, x2, y2), label, crowd in zip(image.boxes.tolist(), image.labels.tolist(),
                                                   image.iscrowd.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": int(image.image_id),
                                "category_id": int(ds.category_ids[label]), "bbox": [x1, y1, w, h],
                                "area": w * h, "iscrowd": int(crowd)})
    categories = [{"id": int(cat_id), "name": name} for cat_id, name in zip(ds.category_ids, ds.classes)]
    write_json(path, {"images": images, "annotations": annotations, "categories": categories})


# ----------------------------------------------------------------------------------------------
# Pascal VOC
def _xml_text(node: ET.Element, tag: str, source: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise EdgecompressError(f"{source}: missing <{tag}> in <{node.tag}>")
    return child.text.strip()


def _xml_number(node: ET.Element, tag: str, source: Path, where: str = "") -> float:
    return _number(_xml_text(node, tag, source), f"{source}: {where}<{tag}>")


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise EdgecompressError(f"image {path} not found") from None
    except (OSError, ImportError) as exc:  # ImportError: ultralytics patches Image.open (HEIF plugin)
        raise EdgecompressError(f"image {path} cannot be read ({exc})") from None


def _parse_voc_xml(xml_path: Path) -> tuple[str, int, int, list[tuple[str, list[float], bool]]]:
    """(filename, width, height, [(name, xyxy box, difficult)]) of one VOC XML; a size of 0 = not given."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise EdgecompressError(f"{xml_path}: not valid XML ({exc})") from None
    file_name = _xml_text(root, "filename", xml_path)
    size = root.find("size")
    width = int(_xml_number(size, "width", xml_path)) if size is not None else 0
    height = int(_xml_number(size, "height", xml_path)) if size is not None else 0
    objects = []
    for number, obj in enumerate(root.iter("object"), start=1):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise EdgecompressError(f"{xml_path}: missing <bndbox> in <object>")
        where = f"image {file_name} object {number} "
        xmin, ymin, xmax, ymax = (_xml_number(bndbox, tag, xml_path, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() == "1"
        objects.append((_xml_text(obj, "name", xml_path), [xmin - 1, ymin - 1, xmax, ymax], is_difficult))
    return file_name, width, height, objects


def load_voc(annotations_dir: str | Path, images_dir: str | Path,
             classes: Sequence[str] | None = None) -> DetectionDataset:
    """Load Pascal VOC XML files (every *.xml under `annotations_dir`, sorted).

    Args:
        annotations_dir: folder of VOC XML files.
        images_dir: folder the XMLs' <filename> is relative to; every named image must be there.
        classes: class names in index order; None = the sorted set of names found.
    """
    annotations_dir, images_dir = Path(annotations_dir), Path(images_dir)
    _require_dir(annotations_dir, "VOC annotations")
    parsed = [(xml_path, *_parse_voc_xml(xml_path)) for xml_path in sorted(annotations_dir.rglob("*.xml"))]
    missing = [f"{name} ({xml_path.relative_to(annotations_dir).as_posix()})"
               for xml_path, name, *_ in parsed if not (images_dir / name).is_file()]
    if missing:
        raise EdgecompressError(f"{annotations_dir}: {len(missing)} listed image(s) not found under {images_dir}: "
                                f"{first_items(missing)}")
    if classes is None:
        classes = sorted({name for *_, objects in parsed for name, _, _ in objects})
    index_of = {name: index for index, name in enumerate(classes)}
    images, skipped = [], []
    for image_id, (xml_path, file_name, width, height, objects) in enumerate(parsed, start=1):
        if width <= 0 or height <= 0:  # some VOC exports leave <size> empty or zero
            width, height = _image_size(images_dir / file_name)
        boxes, labels, crowd = [], [], []
        for number, (name, box, is_difficult) in enumerate(objects, start=1):
            if name not in index_of:
                raise EdgecompressError(f"{xml_path}: object name {name!r} is not one of the {len(classes)} "
                                        f"classes ({', '.join(list(classes)[:5])}{', ...' if len(classes) > 5 else ''})")
            if box[2] <= box[0] or box[3] <= box[1]:
                skipped.append(f"{xml_path.relative_to(annotations_dir).as_posix()} #{number}")
                continue
            boxes.append(box)
            labels.append(index_of[name])
            crowd.append(is_difficult)
        images.append(_annotation(image_id, file_name, width, height, boxes, labels, crowd))
    _warn_skipped(skipped, annotations_dir, "objects")
    return DetectionDataset(images_dir, list(classes), images, list(range(1, len(classes) + 1)))


def _voc_number(value: float) -> str:
    """Integers without a decimal point (VOC's own style); other values in full precision."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_voc(ds: DetectionDataset, out_dir: str | Path) -> None:
    """Write one VOC XML per image (`<out_dir>/<file_name stem>.xml`), the inverse of `load_voc`."""
    out_dir = Path(out_dir)
    for image in ds.images:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = image.file_name
        size = ET.SubElement(root, "size")
        for tag, value in (("width", image.width), ("height", image.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(int(value))
        for (x1, y1, x2, y2), label, crowd in zip(image.boxes.tolist(), image.labels.tolist(),
                                                   image.iscrowd.tolist()):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = ds.classes[label]
            ET.SubElement(obj, "difficult").text = "1" if crowd else "0"
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(bndbox, tag).text = _voc_number(value)
        ET.indent(root)
        write_text(out_dir / Path(image.file_name).with_suffix(".xml"), ET.tostring(root, encoding="unicode") + "\n")


# ----------------------------------------------------------------------------------------------
# YOLO (ultralytics txt)
def _image_files(images_dir: Path) -> list[Path]:
    return sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _parse_yolo_file(label_path: Path, num_classes: int, width: int, height: int
                     ) -> tuple[list[list[float]], list[int], list[int]]:
    """Boxes (absolute xyxy), labels and the line numbers of degenerate boxes skipped, of one txt file."""
    boxes, labels, skipped = [], [], []
    for line_no, line in enumerate(label_path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise EdgecompressError(f"{label_path}:{line_no}: {len(fields)} fields, expected 5 "
                                    "(class cx cy w h; segment polygons are not supported)")
        try:
            label = int(fields[0])
        except ValueError:
            raise EdgecompressError(f"{label_path}:{line_no}: class is {fields[0]!r}, expected an integer "
                                    "(line format 'class cx cy w h')") from None
        cx, cy, w, h = (_number(value, f"{label_path}:{line_no}: {key}")
                        for key, value in zip(("cx", "cy", "w", "h"), fields[1:]))
        if not 0 <= label < num_classes:
            raise EdgecompressError(f"{label_path}:{line_no}: class index {label} out of range, "
                                    f"expected 0..{num_classes - 1}")
        if w <= 0 or h <= 0:
            skipped.append(line_no)
            continue
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        labels.append(label)
    return boxes, labels, skipped


def load_yolo(labels_dir: str | Path, images_dir: str | Path, classes: Sequence[str]) -> DetectionDataset:
    """Load ultralytics YOLO txt labels for every image under `images_dir` (sorted).

    The label of `images_dir/a/b.jpg` is `labels_dir/a/b.txt`; an image without one has no objects.
    Image sizes are read from the file headers (pixels are not decoded).
    """
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    _require_dir(images_dir, "YOLO images")
    _require_dir(labels_dir, "YOLO labels")
    if not classes:
        raise EdgecompressError("YOLO classes: empty list of class names")
    images, skipped, used_labels = [], [], set()
    for image_id, image_path in enumerate(_image_files(images_dir), start=1):
        relative = image_path.relative_to(images_dir)
        width, height = _image_size(image_path)
        label_path = labels_dir / relative.with_suffix(".txt")
        boxes, labels = [], []
        if label_path.is_file():
            used_labels.add(label_path)
            boxes, labels, skipped_here = _parse_yolo_file(label_path, len(classes), width, height)
            skipped += [f"{relative.with_suffix('.txt').as_posix()}:{line_no}" for line_no in skipped_here]
        images.append(_annotation(image_id, relative.as_posix(), width, height, boxes, labels, [False] * len(labels)))
    _warn_skipped(skipped, labels_dir, "label lines")
    orphans = [p for p in labels_dir.rglob("*.txt") if p not in used_labels]
    if orphans:
        logger.warning("%s: %d label file(s) have no image in %s (e.g. %s)", labels_dir, len(orphans),
                       images_dir, orphans[0].name)
    return DetectionDataset(images_dir, list(classes), images, list(range(1, len(classes) + 1)))


def write_yolo(ds: DetectionDataset, labels_dir: str | Path) -> None:
    """Write one YOLO txt per image that has at least one non-crowd box, the inverse of `load_yolo`.

    YOLO has no crowd flag, so crowd boxes are dropped (their count is logged). A stale txt of an image
    that now has no boxes is removed, so the folder describes exactly `ds`.
    """
    labels_dir = Path(labels_dir)
    dropped = 0
    for image in ds.images:
        label_path = labels_dir / Path(image.file_name).with_suffix(".txt")
        lines = []
        for (x1, y1, x2, y2), label, crowd in zip(image.boxes.tolist(), image.labels.tolist(),
                                                   image.iscrowd.tolist()):
            if crowd:
                dropped += 1
                continue
            values = ((x1 + x2) / 2 / image.width, (y1 + y2) / 2 / image.height,
                      (x2 - x1) / image.width, (y2 - y1) / image.height)
            lines.append(" ".join([str(label)] + [f"{v:.{YOLO_DIGITS}g}" for v in values]))
        if lines:
            write_text(label_path, "\n".join(lines) + "\n")
        else:
            label_path.unlink(missing_ok=True)
    if dropped:
        logger.warning("%s: dropped %d crowd box(es): YOLO labels have no crowd flag", labels_dir, dropped)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a YOLO `data.yaml` (`names:` list or {index: name}) or a names.txt (one a line)."""
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"class names file {path} not found: expected a YOLO data.yaml or a names.txt")
    if path.suffix.lower() not in (".yaml", ".yml"):
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EdgecompressError(f"{path}: not valid YAML ({reason})") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            if sorted(names) != list(range(len(names))):
                raise EdgecompressError(f"{path}: names has keys {sorted(names, key=str)[:10]}, "
                                        f"expected the integers 0..{len(names) - 1}")
            names = [names[index] for index in range(len(names))]
        if not isinstance(names, list):
            raise EdgecompressError(f"{path}: names is {names!r}, expected a list of class names "
                                    "or a mapping {index: name}")
        names = [str(name) for name in names]
    if not names:
        raise EdgecompressError(f"{path}: no class names found")
    return names


def write_class_names(ds: DetectionDataset, path: str | Path) -> None:
    """Write the class names as a YOLO data.yaml (`nc`, `names: {index: name}`) when `path` ends in
    .yaml/.yml, else as a names.txt (one a line); `read_class_names` reads either back."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump({"nc": len(ds.classes), "names": dict(enumerate(ds.classes))}, sort_keys=False)
    else:
        text = "".join(f"{name}\n" for name in ds.classes)
    write_text(path, text)


