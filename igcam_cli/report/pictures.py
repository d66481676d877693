"""The picture grid: which images to show, and one row of panels per image.

With ground truth, images are ranked by their own mIoU under the best-scoring evaluated
method (pseudo-masks before CAMs) and the worst, the median and the best are shown
(:mod:`igcam_cli.selection`, which the ``vis/`` overlays choose by too). Without it, the rows
are spread evenly over the ids. A row holds the photo, every CAM folder's heatmap, every mask
folder's pseudo-mask and the ground truth, each scaled down to a panel and written as a JPEG.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from igcam_cli import selection
from igcam_cli.artifacts import RunDir, read_cam, write_image
from igcam_cli.datasets import GroundTruth
from igcam_cli.errors import ImageProblem
from igcam_cli.images import image_size, read_image, read_label_map
from igcam_cli.masks import seed_labels
from igcam_cli.report.facts import Method, RunFacts
from igcam_cli.vis import blend, heatmap

PANEL_SIDE = 320  # pixels of a panel's longer side: four panels across a wide page


@dataclass
class Panel:
    column: str
    file: str | None = None  # relative to the report page
    score: float | None = None  # this image's mIoU under the panel's method
    note: str | None = None  # why there is no picture


@dataclass
class Row:
    image_id: str
    group: str | None  # "worst", "median", "best"; None without ground truth
    panels: list[Panel] = field(default_factory=list)


@dataclass
class Grid:
    rows: list[Row]
    columns: list[str]
    ranked_by: str | None  # the method whose per-image mIoU chose the rows
    images: int  # how many images the rows were chosen from


def prediction(method: Method, image_id: str) -> np.ndarray:
    """The label map a method gives one image, as its evaluation scored it: a mask folder's
    PNG, or a CAM folder's seeds at its best threshold."""
    if method.kind == "masks":
        return read_label_map(RunDir.image_mask(method.path, image_id))
    data = read_cam(RunDir.image_maps(method.path, image_id))
    return seed_labels(data["cams"].astype(np.float32), data["classes"].astype(np.int64),
                       float(method.threshold or 0.0))


def read_truth(truth: GroundTruth | None, image_id: str) -> np.ndarray | None:
    """An image's ground truth; None when it has none or it cannot be read."""
    if truth is None or not truth.has(image_id):
        return None
    try:
        return truth.read(image_id)
    except ImageProblem:
        return None


def image_miou(method: Method, image_id: str, gt: np.ndarray) -> float | None:
    """One image's mIoU under ``method`` (over the classes present in its ground truth or its
    prediction); 0 for a missing or unreadable prediction, as eval counts it."""
    report = method.evaluation or {}
    try:
        pred = prediction(method, image_id)
        if pred.shape != gt.shape:
            return 0.0
        return selection.image_miou(gt, pred, len(report.get("iou", {})),
                                    bool(report.get("ignore_uncertain")))
    except ImageProblem:
        return 0.0
    except ValueError:  # ground truth with a class the evaluation did not know
        return None


def _ranking(facts: RunFacts) -> Method | None:
    scored = sorted(facts.scored, key=lambda m: (m.kind == "masks", m.evaluation["miou"]))
    return scored[-1] if scored and facts.gt is not None else None


def choose(facts: RunFacts, rows: int) -> tuple[list[tuple[str, str | None]], Method | None, int]:
    """The ids of the rows with their groups, the ranking method and the ids chosen from."""
    ranking = _ranking(facts)
    if ranking is not None:
        score = {i: image_miou(ranking, i, gt) for i in facts.gt.ids()
                 if RunDir.image_file(ranking.path, i, ranking.kind).is_file()
                 and (gt := read_truth(facts.gt, i)) is not None}
        known = {i: v for i, v in score.items() if v is not None}
        if known:
            return selection.pick(known, rows), ranking, len(known)
    source = next((m for m in facts.methods if m.kind == "cams"), None)
    ids = [p.stem for p in RunDir.image_files(source.path)] if source else []
    return selection.spread(ids, rows), None, len(ids)


def _shrink(array: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    """``array`` (H, W[, C]) at ``size`` (H, W): nearest for labels, area for pictures."""
    if array.shape[:2] == size:
        return array
    interpolation = cv2.INTER_NEAREST if labels else cv2.INTER_AREA
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


def _photo_path(facts: RunFacts, image_id: str) -> Path | None:
    """The source photo of an image, as its CAM files name it."""
    for method in facts.methods:
        path = RunDir.image_maps(method.path, image_id)
        if method.kind == "cams" and path.is_file():
            return Path(str(read_cam(path, full_size=False)["image"]))
    return None


def _panel(column: str, picture: Callable[[], np.ndarray], assets: Path, name: str) -> Panel:
    """Draw one panel into ``assets/name``; a problem with the image becomes the panel's note."""
    try:
        write_image(assets / name, Image.fromarray(picture()), quality=88)
    except ImageProblem as problem:
        return Panel(column, note=str(problem))
    return Panel(column, file=f"{assets.name}/{name}")


def build_row(facts: RunFacts, image_id: str, group: str | None, assets: Path) -> Row:
    """One image's panels, written into ``assets`` (``<id>.photo.jpg``, ``<id>--<method>.jpg``,
    ``<id>.gt.jpg``: no method folder name can make two panels share a file)."""
    row = Row(image_id, group)
    try:
        source = _photo_path(facts, image_id)
        if source is None:
            raise ImageProblem("no CAM file names this image's photo")
        full = image_size(source)[::-1]
        photo = read_image(source, max_side=PANEL_SIDE)
    except ImageProblem as problem:
        row.panels.append(Panel("photo", note=str(problem)))
        return row
    size = photo.shape[:2]
    gt = read_truth(facts.gt, image_id)

    def at_panel_size(array: np.ndarray, name: str, labels: bool) -> np.ndarray:
        if array.shape[-2:] != full:  # another image's file: never stretched to fit
            raise ImageProblem(f"{name}: size {array.shape[-2:]} is not the photo's {full}")
        return _shrink(array, size, labels)

    def picture(method: Method) -> np.ndarray:
        path = RunDir.image_file(method.path, image_id, method.kind)
        if method.kind == "masks":
            return blend(photo, at_panel_size(read_label_map(path), path.name, labels=True))
        cams = read_cam(path)["cams"].astype(np.float32)
        peak = cams.max(axis=0) if len(cams) else np.zeros(full, np.float32)
        return heatmap(photo, at_panel_size(peak, path.name, labels=False)[None])

    row.panels.append(_panel("photo", lambda: photo, assets, f"{image_id}.photo.jpg"))
    for method in facts.methods:
        if not RunDir.image_file(method.path, image_id, method.kind).is_file():
            row.panels.append(Panel(method.name, note="no file for this image"))
            continue
        panel = _panel(method.name, functools.partial(picture, method), assets,
                       f"{image_id}--{method.slug}.jpg")
        if gt is not None and method.evaluation is not None and panel.file is not None:
            panel.score = image_miou(method, image_id, gt)
        row.panels.append(panel)
    if facts.gt is not None:
        if gt is None:
            row.panels.append(Panel("ground truth", note="no readable ground-truth mask"))
        else:
            where = Path(facts.gt.where(image_id)).name
            row.panels.append(_panel(
                "ground truth", lambda: blend(photo, at_panel_size(gt, where, labels=True)),
                assets, f"{image_id}.gt.jpg"))
    return row


def picture_grid(facts: RunFacts, rows: int, assets: Path) -> Grid:
    """Choose the rows and draw their panels into ``assets``."""
    chosen, ranking, pool = choose(facts, rows)
    columns = ["photo", *(m.name for m in facts.methods)]
    if facts.gt is not None:
        columns.append("ground truth")
    built = [build_row(facts, image_id, group, assets) for image_id, group in chosen]
    return Grid(built, columns, ranking.name if ranking else None, pool)
