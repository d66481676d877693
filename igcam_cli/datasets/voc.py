"""PASCAL VOC layout: JPEGImages/, SegmentationClass(Aug)/ or Annotations/, ImageSets/.

Image-level labels come from the masks when there are any (as IRN derives them), else from the
XML annotations; a dataset without either has unlabelled samples.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from igcam_cli.datasets.base import (
    Dataset,
    DatasetFormat,
    DatasetSpec,
    MaskFolder,
    Sample,
    class_lookup,
    read_split,
)
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import IGNORE, image_size, read_label_map

# Mask folders, preferred first: the augmented set (SBD) covers more images than VOC's own.
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")


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


def split_file(root: Path, split: str) -> Path:
    """``ImageSets/Segmentation/<split>.txt``, else ``ImageSets/Main/<split>.txt`` (datasets
    with only detection annotations have no Segmentation split)."""
    segmentation = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    main = root / "ImageSets" / "Main" / f"{split}.txt"
    return main if not segmentation.is_file() and main.is_file() else segmentation


def _root(spec: DatasetSpec) -> Path:
    assert spec.voc is not None, "the VOC format only handles specs it detects"
    return spec.voc


class Voc(DatasetFormat):
    name = "voc"
    option = "--voc ROOT"

    def detect(self, spec: DatasetSpec) -> bool:
        return spec.voc is not None

    def class_file(self, spec: DatasetSpec) -> Path | None:
        path = _root(spec) / "classes.txt"
        return path if path.is_file() else None

    def ground_truth(self, spec: DatasetSpec) -> MaskFolder | None:
        root = _root(spec)
        folder = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
        return MaskFolder(folder) if folder is not None else None

    def split_ids(self, spec: DatasetSpec) -> list[str]:
        return read_split(split_file(_root(spec), spec.split))

    def load(self, spec: DatasetSpec, class_names: tuple[str, ...], strict: bool) -> Dataset:
        root = _root(spec)
        if not root.is_dir():
            raise IgcamError(f"VOC root {root} is not a directory")
        jpeg = root / "JPEGImages"
        if not jpeg.is_dir():
            raise IgcamError(f"{root} has no JPEGImages/ folder (expected VOC layout)")
        truth = self.ground_truth(spec)
        mask_dir = truth.folder if truth is not None else None
        lookup = class_lookup(class_names)
        samples: list[Sample] = []
        problems: list[str] = []
        for image_id in self.split_ids(spec):
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
                    labels = labels_from_mask(label_map, len(class_names))
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
        return Dataset(samples, class_names, problems)
