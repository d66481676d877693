"""A plain folder of images, with image-level labels from an optional CSV or JSON file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from igcam_cli.datasets.base import (
    Dataset,
    DatasetFormat,
    DatasetSpec,
    Sample,
    check_id,
    class_lookup,
)
from igcam_cli.errors import IgcamError
from igcam_cli.images import IMAGE_SUFFIXES, list_images


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


def _label_id(name: str, where: str) -> str:
    """The image id a labels file names: the file name without its image extension."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return check_id(stem, where)


def read_labels_file(path: Path, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``image_id,label1;label2`` CSV (header optional) or JSON ``{"image_id": ["dog", ...]}``."""
    if not path.is_file():
        raise IgcamError(f"labels file {path} not found")
    lookup = class_lookup(names)
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
            result[_label_id(image_id, f"{path} entry {image_id!r}")] = _parse_label_names(
                [str(r) for r in raw], lookup, f"{path} entry {image_id!r}")
        return result
    for line_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not row[0].strip():
            continue
        if line_number == 1 and row[0].strip().lower() in ("image_id", "image", "id"):
            continue
        raw = ";".join(row[1:]).split(";")
        result[_label_id(row[0].strip(), f"{path} line {line_number}")] = _parse_label_names(
            raw, lookup, f"{path} line {line_number}")
    return result


class Folder(DatasetFormat):
    """Every image in one folder; no splits, no ground truth, classes from ``--classes``."""

    name = "folder"
    option = "--images DIR"

    def detect(self, spec: DatasetSpec) -> bool:
        return spec.images is not None

    def load(self, spec: DatasetSpec, class_names: tuple[str, ...], strict: bool) -> Dataset:
        folder = spec.images
        assert folder is not None, "the folder format only handles specs it detects"
        if not folder.is_dir():
            raise IgcamError(f"image folder {folder} is not a directory")
        files = list_images(folder)
        if not files:
            raise IgcamError(f"image folder {folder} contains no images (.jpg, .png, ...)")
        labels = read_labels_file(spec.labels, class_names) if spec.labels is not None else {}
        problems = []
        known = {f.stem for f in files}
        missing = sorted(set(labels) - known)
        if missing:
            problems.append(f"{spec.labels}: {len(missing)} labelled image(s) not found in "
                            f"{folder}, e.g. {missing[0]}")
        samples = [Sample(check_id(f.stem, str(f)), f, labels.get(f.stem)) for f in files]
        return Dataset(samples, class_names, problems)
