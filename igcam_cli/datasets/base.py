"""What every dataset format shares: the data options, samples, class lists and the protocol.

A format (:mod:`igcam_cli.datasets.voc`, :mod:`igcam_cli.datasets.folder`,
:mod:`igcam_cli.datasets.coco`) turns a :class:`DatasetSpec` into a list of :class:`Sample` with
image-level labels as 0-based foreground class indices. Ground truth (label maps: 0 background,
1..C classes, 255 ignore) is a :class:`GroundTruth`: a folder of PNGs (:class:`MaskFolder`) or
label maps drawn in memory from annotations, so that eval, the pictures and the report read
every format's ground truth the same way. Steps never look inside a dataset folder themselves:
they ask the spec's :class:`DatasetFormat` for samples, ground truth, split and class list, so
that a new layout is one module and one registry line in :mod:`igcam_cli.datasets`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from igcam_cli.errors import IgcamError
from igcam_cli.images import read_label_map
from igcam_cli.options import option

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class Sample:
    """One image: ``labels`` are 0-based foreground class indices, None when unknown;
    ``mask`` is its label PNG where the layout has one (VOC), else None (ground truth drawn
    from annotations comes from the format's :class:`GroundTruth`)."""

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
    split: str = option(
        "train", "Split name under ImageSets/Segmentation/ (--voc). Not for --coco, whose "
                 "annotation file is the split (instances_val2014.json for val): there any "
                 "other value than the default is an error.")
    images: Path | None = option(None, "A plain folder of images (instead of --voc).")
    labels: Path | None = option(
        None, "Image-level labels for --images: CSV 'image_id,label1;label2' or JSON "
              "{\"image_id\": [\"dog\", \"person\"]}. Without it, cam predicts the classes.")
    coco: Path | None = option(
        None, "Dataset in COCO format: an instances_*.json annotation file. Image-level labels "
              "are the categories annotated on an image, crowd annotations included; an image "
              "without annotations is kept as all-background (no labels). Ground truth for "
              "eval is drawn from the polygons and RLE masks: larger instances first so "
              "smaller ones stay on top, crowd regions 255 (ignored) where no other instance "
              "lies.")
    coco_images: Path | None = option(
        None, "Image folder of --coco. Default: the folder named after the annotation file "
              "(annotations/instances_train2014.json -> train2014/ beside annotations/, or "
              "beside the file).")
    # None means coco: manifests written before the COCO format have no such key, and read
    # as None, so their folders stay valid (artifacts.recipe_differences).
    coco_classes: str | None = option(
        None, "Classes of --coco: coco (default: its own categories) or voc (the 20 VOC "
              "classes). 'coco': the JSON's categories in category-id "
              "order with their names (80 for COCO); 'voc': the 20 PASCAL VOC classes "
              "(airplane -> aeroplane, motorcycle -> motorbike, couch -> sofa, potted plant -> "
              "pottedplant, dining table -> diningtable, tv -> tvmonitor, and bicycle, bird, "
              "boat, bottle, bus, car, cat, chair, cow, dog, horse, person, sheep, train as "
              "named). With 'voc', annotations of other categories are dropped: they give no "
              "label, and their pixels are background (0), as VOC's own masks have it.",
        choices=("coco", "voc"))
    classes: Path | None = option(
        None, "Class list file, one foreground class per line. Default: ROOT/classes.txt if "
              "present (--voc), the categories chosen by --coco-classes (--coco), else the 20 "
              "PASCAL VOC classes. With --coco, the names are matched to category names "
              "(after the --coco-classes voc renaming), other categories dropped.")

    def describe(self) -> dict[str, str | None]:
        return {k: (str(v) if v is not None else None) for k, v in self.__dict__.items()}

    @classmethod
    def from_record(cls, record: dict[str, Any], origin: Path) -> DatasetSpec:
        """The spec a manifest recorded with :meth:`describe`, its relative paths taken from
        ``origin`` (the directory the step ran in); unknown and empty entries are left out."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = record.get(f.name)
            if isinstance(value, str) and value:
                path = Path(value)
                is_path = "Path" in str(f.type)
                values[f.name] = ((path if path.is_absolute() else (origin / path).resolve())
                                  if is_path else value)
        return cls(**values)


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


def read_user_text(path: Path, what: str) -> str:
    """A text file a user made (a class list, labels, a split): UTF-8, with or without the
    byte-order mark that Excel and Notepad put first (it would otherwise become part of the
    first id or class name). Other encodings are a one-line error naming the line, not a
    guess: a wrong guess would rename classes silently."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IgcamError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise IgcamError(f"{what} {path} line {line} is not UTF-8 text (byte "
                         f"0x{data[exc.start]:02x}); save the file as UTF-8") from None


def read_class_names(path: Path) -> tuple[str, ...]:
    """A class list file: one foreground class name per line (background is implicit)."""
    lines = [(number, line.strip()) for number, line in
             enumerate(read_user_text(path, "class list").splitlines(), start=1) if line.strip()]
    names = tuple(name for _, name in lines)
    if not names:
        raise IgcamError(f"class list {path} is empty")
    first: dict[str, int] = {}
    for number, name in lines:  # label files name classes in any case: Dog and dog are one
        if name.lower() in first:
            raise IgcamError(f"class list {path}: line {number} ({name!r}) repeats line "
                             f"{first[name.lower()]}'s class (names are compared ignoring case)")
        first[name.lower()] = number
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
    """The image ids of a split file: the first word of every non-empty line, each once (an
    id listed twice, as splits joined with ``cat`` list it, is one image and one output
    file)."""
    if not path.is_file():
        raise IgcamError(f"split file {path} not found")
    ids = list(dict.fromkeys(
        check_id(line.split()[0], f"{path} line {number}")
        for number, line in enumerate(read_user_text(path, "split file").splitlines(), start=1)
        if line.strip()))
    if not ids:
        raise IgcamError(f"split file {path} is empty")
    return ids


class GroundTruth(ABC):
    """An image's ground-truth label map by id (0 background, 1..C classes, 255 ignored):
    what eval scores against and the pictures show, whether it lies in files or is drawn from
    annotations when it is read."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Every image id that has ground truth, sorted."""

    @abstractmethod
    def has(self, image_id: str) -> bool:
        """Whether ``image_id`` has ground truth."""

    @abstractmethod
    def read(self, image_id: str) -> np.ndarray:
        """The (H, W) uint8 label map; :class:`~igcam_cli.errors.ImageProblem` when unreadable."""

    @abstractmethod
    def where(self, image_id: str) -> str:
        """How messages name the ground truth of ``image_id`` (a file, an annotation file)."""

    @abstractmethod
    def describe(self) -> str:
        """What the ground truth is read from, for manifests."""


@dataclass(frozen=True)
class MaskFolder(GroundTruth):
    """A folder of label PNGs named ``<id>.png`` (VOC's SegmentationClass, ``eval --gt``)."""

    folder: Path

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.png"))

    def has(self, image_id: str) -> bool:
        return (self.folder / f"{image_id}.png").is_file()

    def read(self, image_id: str) -> np.ndarray:
        return read_label_map(self.folder / f"{image_id}.png")

    def where(self, image_id: str) -> str:
        return str(self.folder / f"{image_id}.png")

    def describe(self) -> str:
        return str(self.folder)


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

    def ground_truth(self, spec: DatasetSpec) -> GroundTruth | None:
        """The ground-truth label maps that eval scores against; None when there are none."""
        return None

    def split_ids(self, spec: DatasetSpec) -> list[str] | None:
        """The image ids of ``spec.split``; None when the format has no splits (use all)."""
        return None

    def class_file(self, spec: DatasetSpec) -> Path | None:
        """The dataset's own class list file, used when ``--classes`` is not given."""
        return None

    def class_names(self, spec: DatasetSpec) -> tuple[str, ...] | None:
        """The dataset's own class list when ``--classes`` is not given: its class file's by
        default; a format whose annotations name the classes (COCO) lists them itself."""
        path = self.class_file(spec)
        return read_class_names(path) if path is not None else None
