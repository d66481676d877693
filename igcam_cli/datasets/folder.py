"""A plain folder of images, with image-level labels from an optional CSV or JSON file."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

from igcam_cli.datasets.base import (
    Dataset,
    DatasetFormat,
    DatasetSpec,
    Sample,
    check_id,
    class_lookup,
    read_user_text,
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


def _unique_keys(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: a repeated image id would otherwise keep
    its last labels silently."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen and seen[key] != value:
            raise IgcamError(f"labels file {path}: {key!r} is labelled twice, differently; "
                             "give each image one entry")
        seen[key] = value
    return seen


def _label_id(name: str, where: str) -> str:
    """The image id a labels file names: the file name without its image extension."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return check_id(stem, where)


def read_labels_file(path: Path, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``image_id,label1;label2`` CSV (header optional) or JSON ``{"image_id": ["dog", ...]}``."""
    if not path.is_file():
        raise IgcamError(f"labels file {path} not found")
    lookup = class_lookup(names)
    text = read_user_text(path, "labels file")
    result: dict[str, tuple[int, ...]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=functools.partial(_unique_keys, path))
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
    first: dict[str, int] = {}
    for line_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not row[0].strip():
            continue
        if line_number == 1 and row[0].strip().lower() in ("image_id", "image", "id"):
            continue
        where = f"{path} line {line_number}"
        image_id = _label_id(row[0].strip(), where)
        labels = _parse_label_names(";".join(row[1:]).split(";"), lookup, where)
        if image_id in result and result[image_id] != labels:  # the same line twice is fine
            raise IgcamError(f"{where}: {image_id!r} is labelled again, differently from line "
                             f"{first[image_id]}; give each image one line")
        result[image_id] = labels
        first.setdefault(image_id, line_number)
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
        samples: dict[str, Sample] = {}
        for f in files:  # photo.jpg and photo.png: one id, and so one output file for both
            if f.stem in samples:
                problems.append(f"{f}: skipped, {samples[f.stem].image.name} has the same id "
                                f"{f.stem!r} (rename one of them)")
                continue
            samples[f.stem] = Sample(check_id(f.stem, str(f)), f, labels.get(f.stem))
        return Dataset(list(samples.values()), class_names, problems)
