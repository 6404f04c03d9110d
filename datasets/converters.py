"""Box annotations in other formats (Pascal VOC, YOLO, CVAT) -> COCO instance-segmentation JSON.

Every converter returns the same COCO dictionary::

    {"info": {"description": str, "derived_masks": "ellipse" | "box" | None, "skipped_boxes": int},
     "licenses": [],
     "images": [{"id": 1.., "file_name": str, "width": int, "height": int}],
     "annotations": [{"id": 1.., "image_id": int, "category_id": int,
                      "bbox": [x, y, w, h],          # floats, pixels, clipped to the image
                      "area": float,                 # area of the mask, not of the box
                      "iscrowd": 0,
                      "segmentation": [[x0, y0, x1, y1, ...]],
                      "derived_mask": "ellipse" | "box"}],   # only on masks made from a box
     "categories": [{"id": 1.., "name": str, "supercategory": "head"}]}

Box-only formats have no masks, so Mask R-CNN is trained on a mask *derived* from the box (an
inscribed ellipse by default: heads are round). Such masks are guesses, never ground truth, so
each one carries ``"derived_mask"`` and ``info["derived_masks"]`` names the shape; evaluation
reports read these keys to say that mask AP was measured against derived masks.

The converters are pure (files in, dictionary out); only :func:`prepare_split_files` writes.
Boxes are clipped to the image; a box with no area left after clipping is skipped, logged as a
warning naming its file, and counted in ``info["skipped_boxes"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from headseg.data import DERIVED_MASK_KINDS, box_to_polygon
from headseg.io import IMAGE_EXTENSIONS, write_json

if TYPE_CHECKING:
    from headseg.attributes import FaceToHead

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SUPERCATEGORY = "head"

# EXIF orientations 5-8 rotate by 90 degrees: the decoded image (headseg.io.read_image honours
# EXIF) then has width and height swapped relative to the stored pixel array.
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)


# --------------------------------------------------------------------------------------------
# Pure geometry
# --------------------------------------------------------------------------------------------


def clip_box_xywh(box_xywh: Sequence[float], width: float, height: float) -> list[float] | None:
    """Clip a box to the image ``[0, width] x [0, height]``.

    Args:
        box_xywh: COCO box ``[x, y, w, h]`` in pixels (``w`` or ``h`` may be negative).
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        The clipped ``[x, y, w, h]`` as floats, or ``None`` when nothing of positive area is
        left (the box lies outside the image, or ``w <= 0`` or ``h <= 0``).
    """
    x, y, w, h = (float(v) for v in box_xywh)
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if not (x1 > x0 and y1 > y0):
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def polygon_area(polygon: Sequence[float]) -> float:
    """Area enclosed by a simple polygon (shoelace formula).

    Args:
        polygon: Flat COCO polygon ``[x0, y0, x1, y1, ...]`` in pixels, either orientation.

    Returns:
        The non-negative area in square pixels; 0.0 for fewer than three vertices.
    """
    xs, ys = polygon[0::2], polygon[1::2]
    n = min(len(xs), len(ys))
    if n < 3:
        return 0.0
    twice = sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))
    return abs(twice) / 2.0


def derived_mask_area(width: float, height: float, shape: str) -> float:
    """Area of the mask derived from a ``width x height`` box.

    Args:
        width: Box width in pixels.
        height: Box height in pixels.
        shape: ``ellipse`` (the exact inscribed ellipse, ``pi * w * h / 4``) or ``box`` (``w * h``).

    Returns:
        The area in square pixels.
    """
    _check_derived_mask(shape)
    return math.pi * width * height / 4.0 if shape == "ellipse" else width * height


# --------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------


def voc_to_coco(xml_files: list[Path], categories: list[str] | None = None,
                derived_mask: str = "ellipse") -> dict[str, Any]:
    """Convert Pascal VOC XML files (one per image) to a COCO dictionary with derived masks.

    VOC pixel indices are 1-based and inclusive: a box covering the first column of an image has
    ``xmin = xmax = 1``. In COCO's continuous coordinates that is ``x = xmin - 1`` and
    ``w = xmax - xmin + 1`` (same for y / h). Boxes are then clipped to the image size read from
    ``<size>``; boxes left without area are skipped (logged, counted in
    ``info["skipped_boxes"]``). ``<difficult>1</difficult>`` objects are kept and marked
    ``"difficult": 1`` so an evaluation may choose to ignore them.

    Args:
        xml_files: VOC XML files; images get ids ``1..N`` in this order.
        categories: Ordered category names, mapped to ids ``1..K``. ``None``: the sorted names
            found in the files.
        derived_mask: Shape of the mask made from each box: ``ellipse`` or ``box``.

    Returns:
        The COCO dictionary described in this module's docstring; ``file_name`` is the XML's
        ``<filename>``.

    Raises:
        FileNotFoundError: An XML file does not exist.
        ValueError: An XML file cannot be parsed or lacks a required field, two files name the
            same image, or an object's name is not in ``categories``.
    """
    _check_derived_mask(derived_mask)
    parsed = [_parse_voc(Path(f)) for f in xml_files]
    names = _category_names(categories, (obj[0] for _, _, _, _, objs in parsed for obj in objs))
    cat_ids = {name: i for i, name in enumerate(names, start=1)}
    builder = _CocoBuilder(derived_mask)
    for xml_file, file_name, width, height, objects in parsed:
        image_id = builder.add_image(file_name, width, height, source=xml_file)
        for name, (xmin, ymin, xmax, ymax), difficult in objects:
            if name not in cat_ids:
                raise ValueError(
                    f"{xml_file}: object name {name!r} is not one of the categories {names}; "
                    f"add it to the category list or fix the annotation")
            box = [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]
            extra = {"difficult": 1} if difficult else {}
            builder.add_box(image_id, cat_ids[name], box, source=f"{xml_file} ({name})", **extra)
    return builder.build(names, description="Pascal VOC boxes converted to COCO")


def yolo_to_coco(labels_dir: Path, images_dir: Path, class_names: list[str],
                 derived_mask: str = "ellipse") -> dict[str, Any]:
    """Convert YOLO detection labels to a COCO dictionary with derived masks.

    Each image ``images_dir/<stem>.<ext>`` may have ``labels_dir/<stem>.txt`` with one line per
    box, ``class cx cy w h``: a 0-based class index, then the box centre and size normalised to
    ``[0, 1]`` by the image width and height. Images without a label file are kept with no
    annotations (YOLO's convention for background images). Image sizes are read from the file
    header, after EXIF rotation, since that is the image the labels were drawn on.

    Args:
        labels_dir: Folder of ``.txt`` label files.
        images_dir: Folder of images; images get ids ``1..N`` in sorted file-name order.
        class_names: Names of YOLO classes ``0..K-1``; they become COCO ids ``1..K``.
        derived_mask: Shape of the mask made from each box: ``ellipse`` or ``box``.

    Returns:
        The COCO dictionary described in this module's docstring; ``file_name`` is the image's
        name inside ``images_dir``.

    Raises:
        FileNotFoundError: ``labels_dir`` or ``images_dir`` is not a folder.
        ValueError: A label line is malformed (reported with file and line number), or a class
            index is outside ``class_names``.
    """
    _check_derived_mask(derived_mask)
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    for folder, what in ((labels_dir, "labels_dir"), (images_dir, "images_dir")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {folder} is not a folder; pass the folder holding the "
                                    f"{'.txt label files' if what == 'labels_dir' else 'images'}")
    names = _category_names(class_names, ())
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in labels_dir.glob("*.txt") if p.stem not in stems)
    if orphans:
        logger.warning("%d label files in %s have no image in %s and are ignored: %s",
                       len(orphans), labels_dir, images_dir, ", ".join(orphans[:5]))
    builder = _CocoBuilder(derived_mask)
    for image_path in images:
        width, height = _image_size(image_path)
        image_id = builder.add_image(image_path.name, width, height, source=image_path)
        label_file = labels_dir / f"{image_path.stem}.txt"
        if not label_file.is_file():
            continue
        for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            cls, (cx, cy, w, h) = _parse_yolo_line(line, label_file, line_no, len(names))
            box = [(cx - w / 2.0) * width, (cy - h / 2.0) * height, w * width, h * height]
            builder.add_box(image_id, cls + 1, box, source=f"{label_file}:{line_no}")
    return builder.build(names, description="YOLO boxes converted to COCO")


def cvat_to_coco(xml_path: Path, derived_mask: str = "ellipse") -> dict[str, Any]:
    """Convert a CVAT "for images 1.1" XML export to a COCO dictionary.

    ``<polygon points="x1,y1;x2,y2;...">`` shapes keep their drawn outline as segmentation (real
    masks, no ``derived_mask`` key), with vertices clamped to the image and the bbox taken from
    them. ``<box xtl ytl xbr ybr>`` shapes get a derived mask. CVAT coordinates are already
    continuous (``w = xbr - xtl``), so no 1-based shift applies. Other shapes (polylines, points,
    masks, tags) are skipped with a warning.

    Args:
        xml_path: The CVAT XML file; images get ids ``1..N`` in document order.
        derived_mask: Shape of the mask made from each box: ``ellipse`` or ``box``.

    Returns:
        The COCO dictionary described in this module's docstring; categories come from
        ``<meta>``'s label list in its order, or are the sorted label names found when the
        export has no ``<meta>`` labels. ``info["derived_masks"]`` is ``None`` when every
        annotation is a polygon.

    Raises:
        FileNotFoundError: ``xml_path`` does not exist.
        ValueError: The XML is malformed, a shape lacks a coordinate or uses a label missing from
            ``<meta>``, or two images share a name.
    """
    _check_derived_mask(derived_mask)
    xml_path = Path(xml_path)
    root = _parse_xml(xml_path)
    meta_labels = [e.text.strip() for e in root.findall("meta/*/labels/label/name") if e.text]
    shapes = [(image, shape) for image in root.iter("image") for shape in image]
    found = (s.get("label", "") for _, s in shapes if s.tag in ("box", "polygon"))
    names = _category_names(list(dict.fromkeys(meta_labels)) or None, found)
    cat_ids = {name: i for i, name in enumerate(names, start=1)}
    builder = _CocoBuilder(derived_mask)
    skipped_kinds: Counter[str] = Counter()
    for image in root.iter("image"):
        name = image.get("name")
        if not name:
            raise ValueError(f"{xml_path}: an <image> element has no 'name' attribute; every "
                             f"image needs its file name")
        where = f"{xml_path} (image {name!r})"
        width, height = _positive_int(image.get("width"), "width", where), _positive_int(
            image.get("height"), "height", where)
        image_id = builder.add_image(name, width, height, source=xml_path)
        for shape in image:
            if shape.tag not in ("box", "polygon"):
                skipped_kinds[shape.tag] += 1
                continue
            label = shape.get("label", "")
            if label not in cat_ids:
                raise ValueError(f"{where}: {shape.tag} label {label!r} is not one of the <meta> "
                                 f"labels {names}; add the label to the task or fix the shape")
            if shape.tag == "box":
                xtl, ytl, xbr, ybr = (_float_attr(shape, k, where) for k in ("xtl", "ytl", "xbr", "ybr"))
                builder.add_box(image_id, cat_ids[label], [xtl, ytl, xbr - xtl, ybr - ytl],
                                source=f"{where} box {label!r}")
            else:
                polygon = _parse_cvat_points(shape.get("points", ""), where)
                builder.add_polygon(image_id, cat_ids[label], polygon, source=f"{where} polygon {label!r}")
    if skipped_kinds:
        logger.warning("%s: skipped shapes that are neither boxes nor polygons: %s",
                       xml_path, dict(skipped_kinds))
    return builder.build(names, description="CVAT annotations converted to COCO")


def prepare_split_files(src: Path, out: Path, categories: list[str], derived_mask: str = "ellipse",
                        description: str = "",
                        convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Path]:
    """Convert a VOC data set with fixed splits into one COCO JSON per split.

    ``src`` is laid out as ``images/``, ``annotations/<stem>.xml`` and
    ``splits/{train,val,test}.txt`` (one image file name a line). This writes
    ``out/{train,val,test}.json`` and makes ``out/images`` a symlink to the absolute
    ``src/images``, so each ``file_name`` is ``images/<name>`` relative to the JSON's folder.
    Image sizes in the XML are checked against the image file headers. Logs one line per split.

    Args:
        src: The data set folder.
        out: Output folder, created if missing; existing JSON files are replaced atomically.
        categories: Ordered category names, ids ``1..K``; an object with another name is an error.
        derived_mask: Shape of the mask made from each box: ``ellipse`` or ``box``.
        description: Text for ``info["description"]``; the split name is appended.
        convert: Applied to each split's COCO dictionary before it is written (e.g.
            :func:`faces_to_heads_coco`).

    Returns:
        Split name -> path of its JSON file, for ``train``, ``val`` and ``test``.

    Raises:
        FileNotFoundError: A split file, a listed image or its XML is missing.
        ValueError: An image is listed twice or in two splits, its size disagrees with its XML,
            ``out/images`` exists and is not a symlink, or a converter error (see
            :func:`voc_to_coco`).
    """
    src, out = Path(src).resolve(), Path(out)
    _check_derived_mask(derived_mask)
    split_names = {split: _read_split(src / "splits" / f"{split}.txt") for split in SPLITS}
    seen: dict[str, str] = {}
    for split, names in split_names.items():
        for name in names:
            if name in seen:
                raise ValueError(f"image {name!r} is listed in splits {seen[name]!r} and {split!r}; "
                                 f"an image must belong to exactly one split (fix {src / 'splits'})")
            seen[name] = split
    cocos: dict[str, dict[str, Any]] = {}
    for split, names in split_names.items():
        xml_files = []
        for name in names:
            xml_file = src / "annotations" / f"{Path(name).stem}.xml"
            if not xml_file.is_file():
                raise FileNotFoundError(
                    f"image {name!r} is listed in {src / 'splits' / f'{split}.txt'} but has no "
                    f"annotation file {xml_file}; add the XML or remove the line")
            xml_files.append(xml_file)
        coco = voc_to_coco(xml_files, categories=categories, derived_mask=derived_mask)
        for image, name in zip(coco["images"], names):
            _check_image_matches(src / "images" / name, image, xml_files[image["id"] - 1])
            image["file_name"] = f"images/{name}"
        coco["info"]["description"] = f"{description} ({split} split)" if description else f"{split} split"
        cocos[split] = convert(coco) if convert else coco
    out.mkdir(parents=True, exist_ok=True)
    _link_images(src / "images", out / "images")
    paths = {}
    for split, coco in cocos.items():
        paths[split] = write_json(out / f"{split}.json", coco)
        logger.info("%s: %s", paths[split], coco_summary(coco))
    return paths


def coco_summary(coco: dict[str, Any]) -> str:
    """One line describing a COCO dictionary: images, boxes per category, skipped boxes, masks.

    Args:
        coco: A dictionary as returned by the converters in this module.

    Returns:
        For example ``"126 images, 430 boxes (helmet 340, head 90), 0 skipped, masks derived
        (ellipse)"``.
    """
    counts = Counter(a["category_id"] for a in coco["annotations"])
    per_cat = ", ".join(f"{c['name']} {counts[c['id']]}" for c in coco["categories"])
    derived = coco["info"].get("derived_masks")
    masks = f"masks derived ({derived})" if derived else "masks from polygons"
    return (f"{len(coco['images'])} images, {len(coco['annotations'])} boxes ({per_cat}), "
            f"{coco['info'].get('skipped_boxes', 0)} skipped, {masks}")


def faces_to_heads_coco(coco: dict[str, Any], rule: FaceToHead | None = None,
                        derived_mask: str = "ellipse") -> dict[str, Any]:
    """A copy of a COCO set of face boxes whose boxes are the head boxes derived from the faces.

    For training a head segmenter on photos whose boxes cover faces (facemask): each face box
    becomes the head box :func:`headseg.attributes.face_to_head_box` derives (clipped to the
    image), with a mask derived from that head box and marked derived; categories, images and
    ids are kept. The head boxes are an approximation (README, "Several attributes"), so
    ``info["face_to_head"]`` records the rule.

    Args:
        coco: A COCO dictionary as the converters return (face boxes).
        rule: A :class:`headseg.attributes.FaceToHead`; default its measured rule.
        derived_mask: Shape of the mask made from each head box: ``ellipse`` or ``box``.

    Returns:
        The new dictionary; ``coco`` is not changed.
    """
    from headseg.attributes import FaceToHead, coco_faces_to_heads  # noqa: PLC0415 (torch, for this case only)

    _check_derived_mask(derived_mask)
    rule = rule or FaceToHead()
    heads = [{**head, "area": derived_mask_area(*head["bbox"][2:], derived_mask),
              "segmentation": [box_to_polygon(head["bbox"], shape=derived_mask)], "derived_mask": derived_mask}
             for head in coco_faces_to_heads(coco, rule)]
    heads.sort(key=lambda a: a["id"])
    info = {**coco.get("info", {}), "derived_masks": derived_mask, "face_to_head": dataclasses.asdict(rule)}
    return {**coco, "info": info, "annotations": heads}


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


class _CocoBuilder:
    """Accumulates images and annotations with ids 1..N; the one place the schema is written."""

    def __init__(self, derived_mask: str) -> None:
        self.derived_mask = derived_mask
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.sizes: dict[int, tuple[int, int]] = {}
        self.sources: dict[str, str] = {}
        self.skipped = 0

    def add_image(self, file_name: str, width: int, height: int, source: object) -> int:
        if file_name in self.sources:
            raise ValueError(f"{source}: image {file_name!r} is already described by "
                             f"{self.sources[file_name]}; each image needs exactly one annotation file")
        self.sources[file_name] = str(source)
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        self.sizes[image_id] = (width, height)
        return image_id

    def add_box(self, image_id: int, category_id: int, box_xywh: list[float], source: str,
                **extra: Any) -> None:
        clipped = clip_box_xywh(box_xywh, *self.sizes[image_id])
        if clipped is None:
            self.skipped += 1
            logger.warning("%s: box [x, y, w, h] = %s has no area inside the %dx%d image; skipped",
                           source, [round(v, 2) for v in box_xywh], *self.sizes[image_id])
            return
        _, _, w, h = clipped
        self._append(image_id, category_id, clipped, derived_mask_area(w, h, self.derived_mask),
                     box_to_polygon(clipped, shape=self.derived_mask),
                     derived_mask=self.derived_mask, **extra)

    def add_polygon(self, image_id: int, category_id: int, polygon: list[float], source: str) -> None:
        width, height = self.sizes[image_id]
        # Clamping vertices (not true polygon clipping) is exact for the usual case of a few
        # vertices drawn just past the border and keeps the vertex count.
        clamped = [min(max(v, 0.0), float(width if i % 2 == 0 else height)) for i, v in enumerate(polygon)]
        xs, ys = clamped[0::2], clamped[1::2]
        area = polygon_area(clamped)
        if len(xs) < 3 or area <= 0.0:
            self.skipped += 1
            logger.warning("%s: polygon %s has no area inside the %dx%d image; skipped",
                           source, polygon, width, height)
            return
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        self._append(image_id, category_id, bbox, area, clamped)

    def _append(self, image_id: int, category_id: int, bbox: list[float], area: float,
                polygon: list[float], **extra: Any) -> None:
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id,
            "bbox": [float(v) for v in bbox], "area": float(area), "iscrowd": 0,
            "segmentation": [polygon], **extra})

    def build(self, names: list[str], description: str) -> dict[str, Any]:
        any_derived = any("derived_mask" in a for a in self.annotations)
        return {
            "info": {"description": description,
                     # None when no mask in the file was derived from a box.
                     "derived_masks": self.derived_mask if any_derived else None,
                     "skipped_boxes": self.skipped},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": n, "supercategory": SUPERCATEGORY}
                           for i, n in enumerate(names, start=1)],
        }


def _check_derived_mask(shape: str) -> None:
    if shape not in DERIVED_MASK_KINDS:
        raise ValueError(f"derived_mask={shape!r} is not one of {DERIVED_MASK_KINDS}; "
                         f"pass 'ellipse' (heads are round) or 'box'")


def _category_names(given: Sequence[str] | None, found: Any) -> list[str]:
    if given is None:
        return sorted(set(found))
    names = list(given)
    if not names:
        raise ValueError("categories is an empty list; pass the ordered category names, "
                         "or None to use the sorted names found in the annotations")
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise ValueError(f"categories {names} name {duplicates} more than once; each name "
                         f"must appear once, since its position gives its id")
    return names


def _parse_xml(path: Path) -> ET.Element:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path} is not well-formed XML ({e}); re-export the annotation") from None


def _parse_voc(path: Path) -> tuple[Path, str, int, int, list[tuple[str, tuple[float, ...], bool]]]:
    root = _parse_xml(path)
    file_name = _text(root, "filename", path)
    width = _positive_int(_text(root, "size/width", path), "size/width", path)
    height = _positive_int(_text(root, "size/height", path), "size/height", path)
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(obj, f"bndbox/{key}", path)
            try:
                coords.append(float(text))
            except ValueError:
                raise ValueError(f"{path}: object {name!r} has bndbox/{key} = {text!r}, expected "
                                 f"a number; fix the annotation") from None
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append((name, tuple(coords), difficult))
    return path, file_name, width, height, objects


def _text(element: ET.Element, tag: str, path: Path) -> str:
    text = element.findtext(tag)
    if text is None or not text.strip():
        raise ValueError(f"{path}: <{tag}> is missing or empty; every VOC file needs filename, "
                         f"size/width, size/height and, per object, name and bndbox")
    return text.strip()


def _positive_int(text: str | None, what: str, where: object) -> int:
    try:
        value = int(float(text))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise ValueError(f"{where}: {what} is {text!r}, expected a positive number of pixels; "
                         f"fix the annotation's image size")
    return value


def _float_attr(element: ET.Element, key: str, where: str) -> float:
    text = element.get(key)
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {element.tag} attribute {key} is {text!r}, expected a number; "
                         f"fix the export") from None


def _parse_cvat_points(points: str, where: str) -> list[float]:
    flat: list[float] = []
    for pair in filter(None, points.strip().split(";")):
        try:
            x, y = pair.split(",")
            flat += [float(x), float(y)]
        except ValueError:
            raise ValueError(f"{where}: polygon point {pair!r} in points={points!r} is not 'x,y'; "
                             f"expected 'x1,y1;x2,y2;...'") from None
    return flat


def _parse_yolo_line(line: str, path: Path, line_no: int,
                     num_classes: int) -> tuple[int, tuple[float, float, float, float]]:
    where = f"{path}:{line_no}"
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"{where}: {line.strip()!r} has {len(fields)} values, expected 5 "
                         f"('class cx cy w h'); segmentation-format lines are not supported")
    try:
        cls_f = float(fields[0])
        values = tuple(float(v) for v in fields[1:])
    except ValueError:
        raise ValueError(f"{where}: {line.strip()!r} holds a non-number; expected 'class cx cy w h'") from None
    if not cls_f.is_integer() or not 0 <= cls_f < num_classes:
        raise ValueError(f"{where}: class {fields[0]!r} is not an index 0..{num_classes - 1} into "
                         f"class_names; fix the label or pass the full class list")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: {line.strip()!r} holds a non-finite value; expected "
                         f"normalised coordinates in [0, 1]")
    return int(cls_f), values  # type: ignore[return-value]


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height of the image as decoded with EXIF rotation, from the header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_EXIF_ORIENTATION_TAG) in _EXIF_TRANSPOSED:
                width, height = height, width
    except OSError as e:
        raise ValueError(f"image file {path} cannot be read ({e}); is it a complete image?") from None
    return width, height


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist; expected splits/train.txt, "
                                f"val.txt and test.txt with one image file name a line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise ValueError(f"{path} lists {duplicates[:5]} more than once; list each image once")
    return names


def _check_image_matches(image_path: Path, image: dict[str, Any], xml_file: Path) -> None:
    if not image_path.is_file():
        raise FileNotFoundError(f"image {image_path} is listed in a split file but does not exist; "
                                f"add the image or remove the line")
    if image["file_name"] != image_path.name:
        logger.warning("%s names image %r but the split file lists %r; using the split file's name",
                       xml_file, image["file_name"], image_path.name)
    size = _image_size(image_path)
    if size != (image["width"], image["height"]):
        raise ValueError(f"{xml_file} gives image size {image['width']}x{image['height']} but "
                         f"{image_path} is {size[0]}x{size[1]}; fix <size> in the XML so boxes "
                         f"are clipped to the real image")


def _link_images(target: Path, link: Path) -> None:
    if not target.is_dir():
        raise FileNotFoundError(f"image folder {target} does not exist; expected images/ next to "
                                f"annotations/ and splits/")
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        link.unlink()
    elif link.exists():
        raise ValueError(f"{link} exists and is not a symlink; remove it (it should become a link "
                         f"to {target}) or choose another output folder")
    link.symlink_to(target, target_is_directory=True)
