"""Masks in the formats other tools read: COCO-style JSON (semantic or instances, RLE through
pycocotools) and plain index PNGs.

A pseudo-mask PNG holds one class id per pixel (0 background, 255 uncertain). mmsegmentation,
detectron2 and most training code read either COCO annotation files or raw index PNGs, and
instance models need instances: :data:`EXPORTS` holds one class per format, each writing the
whole folder's masks. COCO files get one annotation per image and class (``coco``) or per
connected component of a class of at least ``min_area`` pixels (``instances``); uncertain
pixels belong to no annotation.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from igcam_cli.artifacts import RunDir, ensure_dir, write_bytes, write_image
from igcam_cli.images import IGNORE
from igcam_cli.registry import Registry


@dataclass(frozen=True)
class Mask:
    """One image's pseudo-mask, read."""

    id: str
    labels: np.ndarray  # (H, W) uint8 class ids, 0 background, IGNORE uncertain


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a binary mask, its counts as text (as JSON files hold them)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


class Export(abc.ABC):
    """One output format; ``out`` is a JSON file or a folder, as :attr:`folder` says."""

    name: ClassVar[str]
    folder: ClassVar[bool] = False  # writes a folder of files rather than one file

    def __init__(self, class_names: tuple[str, ...], min_area: int) -> None:
        self.class_names, self.min_area = class_names, min_area

    @abc.abstractmethod
    def write(self, masks: Iterable[Mask], out: Path) -> int:
        """Write every mask; returns how many annotations (or files) were written."""


class CocoExport(Export):
    """A COCO annotation file: images, categories (1..C, as the masks number them) and RLE
    annotations made by :meth:`regions`."""

    @abc.abstractmethod
    def regions(self, labels: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        """(class id, binary mask) of each annotation of one image."""

    def write(self, masks: Iterable[Mask], out: Path) -> int:
        images, annotations = [], []
        for number, mask in enumerate(masks, start=1):
            height, width = mask.labels.shape
            images.append({"id": number, "file_name": mask.id, "height": height,
                           "width": width})
            for class_id, region in self.regions(mask.labels):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": number, "category_id": class_id,
                    "segmentation": _rle(region), "area": int(region.sum()),
                    "bbox": _box(region), "iscrowd": 0})
        categories = [{"id": index, "name": name, "supercategory": "object"}
                      for index, name in enumerate(self.class_names, start=1)]
        document = {"info": {"description": f"igcam pseudo-masks ({self.name})"},
                    "images": images, "annotations": annotations, "categories": categories}
        write_bytes(out, json.dumps(document).encode())
        return len(annotations)


class Semantic(CocoExport):
    """One annotation per image and class present: the class's pixels, in one RLE."""

    name = "coco"

    def regions(self, labels: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        for class_id in np.unique(labels):
            if 0 < class_id != IGNORE:
                yield int(class_id), labels == class_id


class Instances(CocoExport):
    """One annotation per connected component (8-connected) of each class, smaller than
    ``--min-area`` pixels dropped: instances for instance-segmentation models."""

    name = "instances"

    def regions(self, labels: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        import cv2

        for class_id, region in Semantic.regions(self, labels):
            count, components, stats, _ = cv2.connectedComponentsWithStats(
                region.astype(np.uint8), connectivity=8)
            for component in range(1, count):
                if stats[component, cv2.CC_STAT_AREA] >= self.min_area:
                    yield class_id, components == component


class IndexPngs(Export):
    """Grayscale PNGs of the raw class ids (no palette): for code that reads the ids as
    pixel values."""

    name = "index"
    folder = True

    def write(self, masks: Iterable[Mask], out: Path) -> int:
        ensure_dir(out)
        written = 0
        for mask in masks:
            write_image(RunDir.image_mask(out, mask.id), Image.fromarray(mask.labels, mode="L"))
            written += 1
        return written


EXPORTS: Registry[type[Export]] = Registry("export format", (Semantic, Instances, IndexPngs))
