"""What every dataset format shares: the data options, samples, class lists and the protocol.

A format (:mod:`igcam_cli.datasets.voc`, :mod:`igcam_cli.datasets.folder`) turns a
:class:`DatasetSpec` into a list of :class:`Sample` with image-level labels as 0-based
foreground class indices; mask files (value 0 background, 1..C classes, 255 ignore) are attached
when present. Steps never look inside a dataset folder themselves: they ask the spec's
:class:`DatasetFormat` for samples, ground truth, split and class list, so that a new layout is
one module and one registry line in :mod:`igcam_cli.datasets`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from igcam_cli.errors import IgcamError
from igcam_cli.options import option

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


def multi_hot(labels: tuple[int, ...] | None, num_classes: int) -> torch.Tensor:
    """(C,) float targets, 1 for each labelled class (none for an unlabelled image)."""
    target = torch.zeros(num_classes)
    target[list(labels or ())] = 1.0
    return target


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images and labels come from: the data options every step takes."""

    voc: Path | None = option(
        None, "Dataset in PASCAL VOC layout: JPEGImages/, SegmentationClass(Aug)/ or "
              "Annotations/, ImageSets/Segmentation/<split>.txt. Labels come from the masks (or "
              "the XML).")
    split: str = option("train", "Split name under ImageSets/Segmentation/ (--voc).")
    images: Path | None = option(None, "A plain folder of images (instead of --voc).")
    labels: Path | None = option(
        None, "Image-level labels for --images: CSV 'image_id,label1;label2' or JSON "
              "{\"image_id\": [\"dog\", \"person\"]}. Without it, cam predicts the classes.")
    classes: Path | None = option(
        None, "Class list file, one foreground class per line. Default: ROOT/classes.txt if "
              "present, else the 20 PASCAL VOC classes.")

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


def class_lookup(names: tuple[str, ...]) -> dict[str, int]:
    """Class name (any case) -> 0-based index: how label files and annotations name classes."""
    return {name.lower(): index for index, name in enumerate(names)}


def check_id(image_id: str, where: str) -> str:
    """``image_id`` if it names a file inside a folder, else a one-line error naming ``where``.

    Every step turns ids into paths (``JPEGImages/<id>.jpg``, ``RUN/cam/<id>.npz``): an id
    with a path separator, ``..`` or a control character would read or write outside the
    dataset and the run directory.
    """
    if (not image_id or image_id in (".", "..") or any(c in image_id for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in image_id)):
        raise IgcamError(f"{where}: {image_id!r} is not an image id (ids name files inside "
                         "the dataset's folders: no path separators, '..' or control "
                         "characters)")
    return image_id


def read_split(path: Path) -> list[str]:
    """The image ids of a split file: the first word of every non-empty line."""
    if not path.is_file():
        raise IgcamError(f"split file {path} not found")
    ids = [check_id(line.split()[0], f"{path} line {number}")
           for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not ids:
        raise IgcamError(f"split file {path} is empty")
    return ids


class DatasetFormat(ABC):
    """One on-disk dataset layout: what the steps may ask of a dataset, and nothing more.

    Only :meth:`detect` and :meth:`load` are required; a layout without ground truth, splits
    or a class list file of its own keeps the defaults (None).
    """

    name: ClassVar[str]  # the registry key
    option: ClassVar[str]  # how a user selects it ("--voc ROOT"), for "give exactly one of"

    @abstractmethod
    def detect(self, spec: DatasetSpec) -> bool:
        """Whether ``spec`` points at a dataset of this format (its option is given)."""

    @abstractmethod
    def load(self, spec: DatasetSpec, class_names: tuple[str, ...], strict: bool) -> Dataset:
        """Samples with image-level labels; per-image problems are collected unless ``strict``."""

    def ground_truth(self, spec: DatasetSpec) -> Path | None:
        """The folder of ground-truth label PNGs (``<id>.png``) that eval scores against."""
        return None

    def split_ids(self, spec: DatasetSpec) -> list[str] | None:
        """The image ids of ``spec.split``; None when the format has no splits (use all)."""
        return None

    def class_file(self, spec: DatasetSpec) -> Path | None:
        """The dataset's own class list file, used when ``--classes`` is not given."""
        return None
