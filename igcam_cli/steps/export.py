"""``igcam export``: a mask folder in the formats other tools read.

``--format coco`` writes a COCO annotation file with one RLE annotation per image and class,
``instances`` one per connected component of a class (at least ``--min-area`` pixels), and
``index`` a folder of grayscale PNGs holding the raw class ids. Category ids are the masks'
class ids (1..C), named by ``--classes``, else by the class list of the CAMs the masks were
made from (their manifests say which), else VOC's 20.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from igcam_cli import options
from igcam_cli.artifacts import RunDir, read_manifest, replaceable
from igcam_cli.datasets import VOC_CLASSES, read_class_names
from igcam_cli.errors import IgcamError, ImageProblem, print_warning
from igcam_cli.export import EXPORTS, Mask
from igcam_cli.images import IGNORE, read_label_map
from igcam_cli.options import option
from igcam_cli.runner import console, track


@dataclass
class ExportConfig:
    masks: Path = option(options.REQUIRED, "Mask folder (palette PNGs), e.g. RUN/refine.")
    out: Path = option(options.REQUIRED, "Output: a .json file (coco, instances) or a folder "
                                         "(index).")
    format: str = option("coco", "coco: one COCO annotation per image and class; instances: "
                                 "one per connected component; index: grayscale PNGs of the "
                                 "class ids.", choices=tuple(EXPORTS))
    classes: Path | None = option(None, "Class list naming ids 1..C (default: the one the "
                                        "masks' CAMs were made with, else VOC's 20).")
    min_area: int = option(32, "instances: smallest component kept, in pixels.", min=1)


def _class_names(config: ExportConfig) -> tuple[str, ...]:
    if config.classes is not None:
        return read_class_names(config.classes)
    refined = read_manifest(config.masks) or {}
    cams = (refined.get("inputs") or {}).get("cams")
    made = read_manifest(Path(cams)) if isinstance(cams, str) and Path(cams).is_dir() else None
    names = ((made or {}).get("inputs") or {}).get("class_names")
    return tuple(names) if isinstance(names, list) and names else VOC_CLASSES


def export(config: ExportConfig) -> Path:
    """Write the masks in ``config.format``; returns the output path."""
    options.check(config)
    files = RunDir.image_files(config.masks, "masks") if config.masks.is_dir() else []
    if not files:
        raise IgcamError(f"no mask PNGs in {config.masks}")
    names = _class_names(config)
    kind = EXPORTS[config.format](names, config.min_area)
    if not kind.folder:
        replaceable(config.out)
    problems: list[str] = []

    def masks() -> Iterator[Mask]:  # read as they are written, never all at once
        for path in track(files, len(files), "export"):
            try:
                labels = read_label_map(path)
            except ImageProblem as problem:
                problems.append(str(problem))
                continue
            top = int(labels[labels != IGNORE].max(initial=0))
            if top > len(names):
                raise IgcamError(f"{path} has class {top}, but the class list has "
                                 f"{len(names)}: pass --classes")
            yield Mask(path.stem, labels)

    written = kind.write(masks(), config.out)
    for problem in problems:
        print_warning(problem)
    console.print(f"export: {len(files) - len(problems)} masks, {written} "
                  f"{'files' if kind.folder else 'annotations'} ({config.format}) -> "
                  f"{config.out}")
    return config.out
