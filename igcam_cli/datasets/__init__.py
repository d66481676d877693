"""Datasets: every on-disk layout is a :class:`DatasetFormat` registered in :data:`FORMATS`.

The data options (:class:`DatasetSpec`) select one format by its :meth:`DatasetFormat.detect`;
steps load samples with :func:`load_dataset` and ask :func:`dataset_format` for ground truth
and splits. Adding a layout is one module and one registry line in :data:`FORMATS` (a
:class:`~igcam_cli.registry.Registry` of format instances).
"""

from __future__ import annotations

from pathlib import Path

from igcam_cli.datasets.base import (
    VOC_CLASSES,
    Dataset,
    DatasetFormat,
    DatasetSpec,
    GroundTruth,
    MaskFolder,
    Sample,
    multi_hot,
    read_class_names,
    read_split,
)
from igcam_cli.datasets.coco import Coco
from igcam_cli.datasets.folder import Folder, read_labels_file
from igcam_cli.datasets.voc import Voc, labels_from_mask
from igcam_cli.errors import IgcamError
from igcam_cli.registry import Registry

FORMATS: Registry[DatasetFormat] = Registry("dataset format")
FORMATS.register(Voc())
FORMATS.register(Folder())
FORMATS.register(Coco())

__all__ = [
    "FORMATS", "VOC_CLASSES", "Dataset", "DatasetFormat", "DatasetSpec", "GroundTruth",
    "MaskFolder", "Sample", "class_file", "class_names", "dataset_format", "labels_from_mask",
    "load_dataset", "multi_hot", "read_class_names", "read_labels_file", "read_split",
]


def _exactly_one() -> IgcamError:
    return IgcamError("give exactly one of " + " or ".join(f.option for f in FORMATS.values()))


def dataset_format(spec: DatasetSpec) -> DatasetFormat | None:
    """The format ``spec`` selects; None when it selects none (eval may do without a dataset)."""
    found = [fmt for fmt in FORMATS.values() if fmt.detect(spec)]
    if len(found) > 1:
        raise _exactly_one()
    return found[0] if found else None


def class_file(spec: DatasetSpec) -> Path | None:
    """The class list a dataset uses: ``--classes``, else the format's own (``ROOT/classes.txt``
    for VOC), else None (the 20 VOC classes)."""
    if spec.classes is not None:
        return spec.classes
    fmt = dataset_format(spec)
    return fmt.class_file(spec) if fmt is not None else None


def class_names(spec: DatasetSpec) -> tuple[str, ...]:
    """The foreground class names of ``spec`` (background is implicit): ``--classes``, else
    the format's own (``ROOT/classes.txt`` for VOC, the categories for COCO), else VOC's 20."""
    if spec.classes is not None:
        return read_class_names(spec.classes)
    fmt = dataset_format(spec)
    names = fmt.class_names(spec) if fmt is not None else None
    return names if names is not None else VOC_CLASSES


def load_dataset(spec: DatasetSpec, strict: bool = False) -> Dataset:
    """Read the dataset that ``spec`` points at; per-image problems go to ``Dataset.problems``."""
    fmt = dataset_format(spec)
    if fmt is None:
        raise _exactly_one()
    dataset = fmt.load(spec, class_names(spec), strict)
    if strict and dataset.problems:
        raise IgcamError(dataset.problems[0])
    if not dataset.samples:
        raise IgcamError("no usable images: " + (dataset.problems[0] if dataset.problems
                                                  else "the dataset is empty"))
    return dataset
