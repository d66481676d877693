"""COCO layout: an ``instances_*.json`` annotation file and the folder of its images.

Image-level labels are the categories annotated on an image, crowd annotations included (as
IRN's COCO preprocessing counts every instance); an image without any annotation is a valid
all-background image and is kept with no labels, a negative for every class. Ground truth is
drawn in memory when it is read (:class:`CocoTruth`), never cached on disk: polygons and RLE
masks are rasterised with pycocotools, larger instances first so that smaller ones stay
visible on top, and crowd regions (``iscrowd=1``) are 255 (ignored) wherever no single
instance lies. The annotation file is the split, so ``--split`` does not apply.

With ``--coco-classes voc`` the 20 VOC classes are used through :data:`VOC_NAMES`; other
categories are dropped: no label, and background pixels, as VOC's own masks label every
object outside its 20 classes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igcam_cli.datasets.base import (
    VOC_CLASSES,
    Dataset,
    DatasetFormat,
    DatasetSpec,
    GroundTruth,
    Sample,
    check_id,
    class_lookup,
    read_class_names,
)
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import IGNORE, MAX_IMAGE_PIXELS, image_size

# COCO category name -> VOC class name, for the COCO names VOC spells otherwise; the other
# VOC classes have the same name in COCO.
VOC_NAMES: dict[str, str] = {
    "airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
    "potted plant": "pottedplant", "dining table": "diningtable", "tv": "tvmonitor",
}


@dataclass(frozen=True)
class CocoImage:
    """One image entry with its annotations (``category_id``, ``iscrowd``, ``segmentation``)."""

    id: str  # the file name without its extension, as every step names the image
    file_name: str
    height: int
    width: int
    annotations: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class CocoIndex:
    images: tuple[CocoImage, ...]  # in the file's order
    categories: tuple[tuple[int, str], ...]  # (category id, name), by id


def _ints(entry: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return all(isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool)
               for k in keys)


@functools.lru_cache(maxsize=1)
def _read_index(path: Path, stamp: tuple[int, int]) -> CocoIndex:
    """The annotation file as an index; cached per file version (``stamp``: mtime and size),
    since every step of ``igcam run`` reads the same large file."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise IgcamError(f"cannot read COCO annotations {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IgcamError(f"COCO annotations {path}: invalid JSON ({exc})") from None
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise IgcamError(f"{path} is not a COCO instances file (expected 'images', "
                         "'annotations' and 'categories' lists, as in instances_train2014.json)")
    categories = {}
    for entry in data["categories"]:
        if not isinstance(entry, dict) or not _ints(entry, ("id",)) \
                or not isinstance(entry.get("name"), str):
            raise IgcamError(f"{path}: a category without an integer 'id' and a 'name'")
        if entry["id"] in categories:  # its annotations would silently go to the last one
            raise IgcamError(f"{path}: categories {categories[entry['id']]!r} and "
                             f"{entry['name']!r} share the id {entry['id']}")
        categories[entry["id"]] = entry["name"]
    if not categories:
        raise IgcamError(f"{path}: 'categories' is empty: a dataset needs at least one class")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for entry in data["annotations"]:
        if not isinstance(entry, dict) or not _ints(entry, ("image_id", "category_id")):
            raise IgcamError(f"{path}: an annotation without integer 'image_id' and "
                             "'category_id' (not an instances file?)")
        if entry["category_id"] not in categories:
            raise IgcamError(f"{path}: annotation {entry.get('id')} names category "
                             f"{entry['category_id']}, which 'categories' does not list")
        by_image.setdefault(entry["image_id"], []).append(
            {k: entry.get(k) for k in ("category_id", "iscrowd", "segmentation")})
    images, seen, names = [], {}, {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or not _ints(entry, ("id", "height", "width")) \
                or not isinstance(entry.get("file_name"), str):
            raise IgcamError(f"{path}: an image without integer 'id', 'height', 'width' and "
                             "a 'file_name'")
        if entry["height"] < 1 or entry["width"] < 1:
            raise IgcamError(f"{path} image {entry['id']}: size {entry['width']}x"
                             f"{entry['height']} is not an image's")
        name = entry["file_name"]
        image_id = check_id(Path(name).stem, f"{path} image {entry['id']}")
        if Path(name).name != name:
            raise IgcamError(f"{path} image {entry['id']}: file name {name!r} is not a "
                             "name inside the image folder")
        if image_id in seen:
            raise IgcamError(f"{path}: images {seen[image_id]} and {entry['id']} share the "
                             f"id {image_id!r}")
        if entry["id"] in names:  # its annotations and ground truth would go to both
            raise IgcamError(f"{path}: images {names[entry['id']]!r} and {name!r} share the "
                             f"numeric id {entry['id']}")
        seen[image_id], names[entry["id"]] = entry["id"], name
        images.append(CocoImage(image_id, name, entry["height"], entry["width"],
                                tuple(by_image.get(entry["id"], ()))))
    unknown = set(by_image) - {entry["id"] for entry in data["images"]}
    if unknown:
        raise IgcamError(f"{path}: {len(unknown)} annotated image id(s) missing from "
                         f"'images', e.g. {min(unknown)}")
    return CocoIndex(tuple(images), tuple(sorted(categories.items())))


def read_index(path: Path) -> CocoIndex:
    """The parsed annotation file ``path`` (a one-line error when it is missing or no
    COCO instances file)."""
    if not path.is_file():
        raise IgcamError(f"COCO annotations {path} not found")
    stat = path.stat()
    return _read_index(path.resolve(), (stat.st_mtime_ns, stat.st_size))


def category_names(index: CocoIndex, classes: str | None) -> dict[int, str]:
    """Category id -> the class name it counts as: its own name (``coco``, the default None),
    its VOC name (``voc``; categories outside VOC's 20 are left out)."""
    if classes != "voc":
        return dict(index.categories)
    voc = set(VOC_CLASSES)
    renamed = {cid: VOC_NAMES.get(name, name) for cid, name in index.categories}
    return {cid: name for cid, name in renamed.items() if name in voc}


def category_classes(index: CocoIndex, spec: DatasetSpec,
                     class_names: tuple[str, ...]) -> dict[int, int]:
    """Category id -> 0-based class index in ``class_names``; categories not in the class
    list are left out (their annotations are dropped)."""
    lookup = class_lookup(class_names)
    named = category_names(index, spec.coco_classes)
    if spec.classes is not None:  # a class list of the user's: every name must be a category
        known = {name.lower() for name in named.values()}
        absent = [name for name in class_names if name.lower() not in known]
        if absent:
            raise IgcamError(f"class list {spec.classes}: {absent[0]!r} is no category of "
                             f"{spec.coco} (with --coco-classes {spec.coco_classes or 'coco'})")
    return {cid: lookup[name.lower()] for cid, name in named.items() if name.lower() in lookup}


def _check_polygons(polygons: list[Any], height: int, width: int) -> None:
    """Polygons pycocotools can draw: lists of at least 3 finite x, y pairs near the image.
    Given fewer points it raises; given coordinates of 1e9 it crashes the process."""
    reach = 4 * max(height, width)  # a labelling tool's overshoot, not a runaway point
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 \
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           for v in polygon):
            raise ImageProblem("a polygon that is not at least 3 x, y points")
        values = np.asarray(polygon, np.float64)
        if not np.isfinite(values).all() or np.abs(values).max() > reach:
            raise ImageProblem(f"a polygon point far outside the {width}x{height} image")


def _run_lengths(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed RLE string, read as pycocotools' ``rleFrString`` reads
    them (6-bit groups, the high bit "more", every run after the second a difference)."""
    data = counts.encode("latin-1") if isinstance(counts, str) else counts
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position == len(data):
                raise ImageProblem("an RLE mask cut short")
            group = data[position] - 48
            value |= (group & 0x1F) << shift
            more, position, shift = bool(group & 0x20), position + 1, shift + 5
            if not more and group & 0x10:
                value |= -1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def _check_rle(counts: Any, height: int, width: int) -> None:
    """An RLE mask whose runs cover the image exactly: pycocotools decodes any string, and
    garbage became a mask of whatever it spelled."""
    try:
        runs = _run_lengths(counts) if isinstance(counts, str | bytes) else list(counts)
    except (TypeError, UnicodeEncodeError):
        raise ImageProblem("an RLE mask whose counts are not run lengths") from None
    if not all(isinstance(run, int) and run >= 0 for run in runs) or sum(runs) != height * width:
        raise ImageProblem(f"an RLE mask whose runs do not cover the {width}x{height} image")


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One annotation's (H, W) uint8 mask from its polygons, RLE or compressed RLE."""
    from pycocotools import mask as coco_mask

    try:
        if isinstance(segmentation, list):  # polygons
            _check_polygons(segmentation, height, width)
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            _check_rle(segmentation["counts"], height, width)
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict):
            _check_rle(segmentation.get("counts"), height, width)
            rle = segmentation
        else:
            raise TypeError("no polygon or RLE")
        mask = coco_mask.decode(rle)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ImageProblem(f"unreadable segmentation ({exc})") from None
    if mask.shape != (height, width):
        raise ImageProblem(f"segmentation of size {mask.shape[1]}x{mask.shape[0]} on an "
                           f"image of {width}x{height}")
    return mask


def rasterise(image: CocoImage, classes: dict[int, int]) -> np.ndarray:
    """The semantic label map of one image: 0 background, class index + 1 per instance, the
    larger instances painted first so that smaller ones stay on top, and crowd regions 255
    where no instance lies (a crowd's outline is too rough to score against)."""
    labels = np.zeros((image.height, image.width), np.uint8)
    instances = []
    for annotation in image.annotations:
        if annotation["category_id"] not in classes:
            continue
        mask = _decode(annotation["segmentation"], image.height, image.width).astype(bool)
        if annotation.get("iscrowd"):
            labels[mask] = IGNORE
        else:
            instances.append((int(mask.sum()), classes[annotation["category_id"]] + 1, mask))
    for _, value, mask in sorted(instances, key=lambda item: -item[0]):
        labels[mask] = value
    return labels


class CocoTruth(GroundTruth):
    """Label maps drawn from the annotations when they are read: no mask file is written."""

    def __init__(self, path: Path, images: tuple[CocoImage, ...], classes: dict[int, int]):
        self.path = path
        self.images = {image.id: image for image in images}
        self.classes = classes

    def ids(self) -> list[str]:
        return sorted(self.images)

    def has(self, image_id: str) -> bool:
        return image_id in self.images

    def read(self, image_id: str) -> np.ndarray:
        image = self.images[image_id]
        if image.height * image.width > MAX_IMAGE_PIXELS:  # its label map would not fit
            raise ImageProblem(f"{self.where(image_id)}: size {image.width}x{image.height} is "
                               f"over {MAX_IMAGE_PIXELS:,} pixels, larger than any image read")
        try:
            return rasterise(image, self.classes)
        except ImageProblem as problem:
            raise ImageProblem(f"{self.where(image_id)}: {problem}") from None

    def where(self, image_id: str) -> str:
        return f"{self.path} image {image_id}"

    def describe(self) -> str:
        return str(self.path)


def images_folder(annotations: Path) -> Path | None:
    """The image folder an annotation file names: ``instances_train2014.json`` ->
    ``train2014/`` beside its folder (COCO's own layout), else beside the file."""
    stem = annotations.stem
    name = stem.split("_", 1)[1] if "_" in stem else stem
    candidates = (annotations.parent.parent / name, annotations.parent / name)
    return next((folder for folder in candidates if folder.is_dir()), None)


class Coco(DatasetFormat):
    name = "coco"
    option = "--coco ANNOTATIONS.json"

    def detect(self, spec: DatasetSpec) -> bool:
        if spec.coco_images is not None and spec.coco is None:
            raise IgcamError("--coco-images needs --coco ANNOTATIONS.json")
        return spec.coco is not None

    def _index(self, spec: DatasetSpec) -> CocoIndex:
        assert spec.coco is not None, "the COCO format only handles specs it detects"
        if spec.split != DatasetSpec.split:
            raise IgcamError(f"--split does not apply to --coco (got {spec.split!r}): the "
                             "annotation file is the split, e.g. instances_val2014.json")
        return read_index(spec.coco)

    def class_names(self, spec: DatasetSpec) -> tuple[str, ...]:
        if spec.coco_classes == "voc":
            return VOC_CLASSES
        # Categories named alike, in any case, are one class: class names are compared
        # ignoring case everywhere (labels files, class lists), the first spelling kept.
        names: dict[str, str] = {}
        for _, name in self._index(spec).categories:
            names.setdefault(name.lower(), name)
        return tuple(names.values())

    def ground_truth(self, spec: DatasetSpec) -> CocoTruth:
        index = self._index(spec)
        names = read_class_names(spec.classes) if spec.classes else self.class_names(spec)
        return CocoTruth(spec.coco, index.images, category_classes(index, spec, names))

    def split_ids(self, spec: DatasetSpec) -> list[str]:
        return [image.id for image in self._index(spec).images]

    def load(self, spec: DatasetSpec, class_names: tuple[str, ...], strict: bool) -> Dataset:
        index = self._index(spec)
        folder = spec.coco_images or images_folder(spec.coco)
        if folder is None:
            raise IgcamError(f"no image folder found for {spec.coco} (looked for "
                             f"{spec.coco.stem.split('_', 1)[-1]}/ beside it and beside its "
                             "folder): pass --coco-images DIR")
        if not folder.is_dir():
            raise IgcamError(f"COCO image folder {folder} is not a directory")
        if len(class_names) > 254:
            raise IgcamError(f"{spec.coco}: at most 254 classes fit in a label PNG")
        classes = category_classes(index, spec, class_names)
        samples: list[Sample] = []
        problems: list[str] = []
        for image in index.images:
            path = folder / image.file_name
            try:
                width, height = image_size(path)
                if (width, height) != (image.width, image.height):
                    raise ImageProblem(f"{path}: size {width}x{height} differs from the "
                                       f"annotations' {image.width}x{image.height}")
            except ImageProblem as problem:
                if strict:
                    raise
                problems.append(str(problem))
                continue
            labels = {classes[a["category_id"]] for a in image.annotations
                      if a["category_id"] in classes}
            samples.append(Sample(image.id, path, tuple(sorted(labels))))
        return Dataset(samples, class_names, problems)
