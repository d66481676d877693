"""Datasets: a VOC-layout folder, or a plain folder of images with a labels file.

Both become a list of :class:`Sample` with image-level labels as 0-based foreground class
indices; mask files (value 0 background, 1..C classes, 255 ignore) are attached when present.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import IGNORE, image_size, list_images, read_label_map

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class Sample:
    """One image: ``labels`` are 0-based foreground class indices, None when unknown."""

    id: str
    image: Path
    labels: tuple[int, ...] | None = None
    mask: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images and labels come from (the CLI's ``--voc``/``--images`` options)."""

    voc: Path | None = None
    split: str = "train"
    images: Path | None = None
    labels: Path | None = None
    classes: Path | None = None

    def describe(self) -> dict[str, str | None]:
        return {k: (str(v) if v is not None else None) for k, v in self.__dict__.items()}


@dataclass
class Dataset:
    samples: list[Sample]
    class_names: tuple[str, ...]
    problems: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labelled(self) -> list[Sample]:
        return [s for s in self.samples if s.labels is not None]


def read_class_names(path: Path) -> tuple[str, ...]:
    """A class list file: one foreground class name per line (background is implicit)."""
    try:
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as exc:
        raise IgcamError(f"cannot read class list {path}: {exc.strerror}") from None
    if not names:
        raise IgcamError(f"class list {path} is empty")
    if len(set(names)) != len(names):
        raise IgcamError(f"class list {path} repeats a class name")
    if len(names) > 254:
        raise IgcamError(f"class list {path}: at most 254 classes fit in a VOC label PNG")
    return names


def _class_lookup(names: tuple[str, ...]) -> dict[str, int]:
    return {name.lower(): index for index, name in enumerate(names)}


def labels_from_mask(mask: np.ndarray, num_classes: int) -> tuple[int, ...]:
    """Image-level labels as IRN derives them: every class value present in the mask."""
    values = np.unique(mask)
    return tuple(int(v) - 1 for v in values if 0 < v <= num_classes and v != IGNORE)


def _labels_from_xml(path: Path, lookup: dict[str, int]) -> tuple[int, ...]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ImageProblem(f"{path}: unreadable annotation ({exc})") from None
    found = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in lookup:
            raise ImageProblem(f"{path}: unknown class name {name!r}")
        found.add(lookup[name])
    return tuple(sorted(found))


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise IgcamError(f"split file {path} not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise IgcamError(f"split file {path} is empty")
    return ids


def _load_voc(spec: DatasetSpec, names: tuple[str, ...], strict: bool) -> Dataset:
    root = spec.voc
    assert root is not None
    if not root.is_dir():
        raise IgcamError(f"VOC root {root} is not a directory")
    jpeg = root / "JPEGImages"
    if not jpeg.is_dir():
        raise IgcamError(f"{root} has no JPEGImages/ folder (expected VOC layout)")
    mask_dir = gt_dir(spec)
    split_file = root / "ImageSets" / "Segmentation" / f"{spec.split}.txt"
    if not split_file.is_file() and (root / "ImageSets" / "Main" / f"{spec.split}.txt").is_file():
        split_file = root / "ImageSets" / "Main" / f"{spec.split}.txt"
    lookup = _class_lookup(names)
    samples: list[Sample] = []
    problems: list[str] = []
    for image_id in _read_split(split_file):
        image = jpeg / f"{image_id}.jpg"
        try:
            width_height = image_size(image)
            mask = mask_dir / f"{image_id}.png" if mask_dir is not None else None
            if mask is not None and mask.is_file():
                label_map = read_label_map(mask)
                if label_map.shape[::-1] != width_height:
                    raise ImageProblem(
                        f"{mask}: mask size {label_map.shape[1]}x{label_map.shape[0]} differs "
                        f"from image size {width_height[0]}x{width_height[1]}")
                labels = labels_from_mask(label_map, len(names))
            else:
                mask = None
                xml = root / "Annotations" / f"{image_id}.xml"
                labels = _labels_from_xml(xml, lookup) if xml.is_file() else None
        except ImageProblem as problem:
            if strict:
                raise
            problems.append(str(problem))
            continue
        samples.append(Sample(image_id, image, labels, mask))
    return Dataset(samples, names, problems)


def _parse_label_names(raw: list[str], lookup: dict[str, int], where: str) -> tuple[int, ...]:
    indices = set()
    for name in raw:
        name = name.strip()
        if not name:
            continue
        if name.lower() not in lookup:
            raise IgcamError(f"{where}: unknown class name {name!r} (not in the class list)")
        indices.add(lookup[name.lower()])
    return tuple(sorted(indices))


def read_labels_file(path: Path, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``image_id,label1;label2`` CSV (header optional) or JSON ``{"image_id": ["dog", ...]}``."""
    if not path.is_file():
        raise IgcamError(f"labels file {path} not found")
    lookup = _class_lookup(names)
    text = path.read_text()
    result: dict[str, tuple[int, ...]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IgcamError(
                f"labels file {path}: invalid JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        if not isinstance(data, dict):
            raise IgcamError(f"labels file {path}: expected an object {{image_id: [labels]}}")
        for image_id, raw in data.items():
            raw = raw.split(";") if isinstance(raw, str) else raw
            if not isinstance(raw, list):
                raise IgcamError(f"labels file {path}: entry {image_id!r} is not a list of names")
            result[Path(image_id).stem] = _parse_label_names(
                [str(r) for r in raw], lookup, f"{path} entry {image_id!r}")
        return result
    for line_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not row[0].strip():
            continue
        if line_number == 1 and row[0].strip().lower() in ("image_id", "image", "id"):
            continue
        raw = ";".join(row[1:]).split(";")
        result[Path(row[0].strip()).stem] = _parse_label_names(
            raw, lookup, f"{path} line {line_number}")
    return result


def _load_folder(spec: DatasetSpec, names: tuple[str, ...]) -> Dataset:
    folder = spec.images
    assert folder is not None
    if not folder.is_dir():
        raise IgcamError(f"image folder {folder} is not a directory")
    files = list_images(folder)
    if not files:
        raise IgcamError(f"image folder {folder} contains no images (.jpg, .png, ...)")
    labels = read_labels_file(spec.labels, names) if spec.labels is not None else {}
    problems = []
    known = {f.stem for f in files}
    missing = sorted(set(labels) - known)
    if missing:
        problems.append(f"{spec.labels}: {len(missing)} labelled image(s) not found in {folder}, "
                        f"e.g. {missing[0]}")
    samples = [Sample(f.stem, f, labels.get(f.stem)) for f in files]
    return Dataset(samples, names, problems)


def class_file(spec: DatasetSpec) -> Path | None:
    """The class list a dataset uses: ``--classes``, else ``ROOT/classes.txt``, else None (VOC)."""
    if spec.classes is not None:
        return spec.classes
    if spec.voc is not None and (spec.voc / "classes.txt").is_file():
        return spec.voc / "classes.txt"
    return None


def gt_dir(spec: DatasetSpec) -> Path | None:
    """The ground-truth mask folder of a VOC-layout dataset, if it has one."""
    if spec.voc is None:
        return None
    return next((spec.voc / d for d in ("SegmentationClassAug", "SegmentationClass")
                 if (spec.voc / d).is_dir()), None)


def load_dataset(spec: DatasetSpec, strict: bool = False) -> Dataset:
    """Read the dataset that ``spec`` points at; per-image problems go to ``Dataset.problems``."""
    if (spec.voc is None) == (spec.images is None):
        raise IgcamError("give exactly one of --voc ROOT or --images DIR")
    names_file = class_file(spec)
    names = read_class_names(names_file) if names_file is not None else VOC_CLASSES
    dataset = _load_voc(spec, names, strict) if spec.voc else _load_folder(spec, names)
    if strict and dataset.problems:
        raise IgcamError(dataset.problems[0])
    if not dataset.samples:
        raise IgcamError("no usable images: " + (dataset.problems[0] if dataset.problems
                                                  else "the dataset is empty"))
    return dataset
