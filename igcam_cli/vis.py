"""Overlay pictures: photo | CAM heatmap | pseudo-mask | ground truth, side by side, titled,
with a legend of the classes drawn; and the mask colours the report's panels use too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from igcam_cli.artifacts import RunDir, ensure_dir, read_cam, write_image
from igcam_cli.datasets import GroundTruth
from igcam_cli.errors import ImageProblem
from igcam_cli.images import IGNORE, read_image, read_label_map, voc_palette
from igcam_cli.selection import image_miou, pick, spread

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # a pixel's brightness (ITU-R BT.601)
TEXT, GAP = 13, 4  # pixels of the overlays' text and of the space between panels


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """VOC colours, with 255 (uncertain / ignored) drawn white."""
    palette = voc_palette()
    palette[IGNORE] = (255, 255, 255)
    return palette[labels]


def heatmap(image: np.ndarray, cams: np.ndarray) -> np.ndarray:
    peak = cams.max(axis=0) if len(cams) else np.zeros(image.shape[:2], np.float32)
    colour = cv2.applyColorMap((np.clip(peak, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (0.5 * image + 0.5 * colour[..., ::-1]).astype(np.uint8)


def outline(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the class pixels (not background, not 255) with a 4-neighbour of another
    label, the inner edge of every class region."""
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != labels
    return edge & (labels != 0) & (labels != IGNORE)


def blend(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The photo with its labelled pixels tinted by their class colour and every class region
    outlined, white around a dark colour and black around a light one. Background pixels stay
    the photo as it is: darkening them (as a blend of the whole picture did) made the dark
    palette colours (navy, maroon, olive) vanish into the photo; the edge shows where a region
    ends whatever the photo under it."""
    colours = colour_labels(labels)
    picture = image.astype(np.float32)
    labelled = labels != 0
    picture[labelled] = 0.3 * picture[labelled] + 0.7 * colours[labelled]
    edge = outline(labels)
    dark = colours[edge].astype(np.float32) @ LUMA < 128
    picture[edge] = np.where(dark[:, None], 255, 0)
    return picture.astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (no font file to find on the system), at ``size`` pixels."""
    return ImageFont.load_default(size)


def _note(size: tuple[int, int], text: str) -> np.ndarray:
    """A grey panel of ``size`` (H, W) saying why there is no picture."""
    panel = Image.new("RGB", size[::-1], (238, 238, 238))
    ImageDraw.Draw(panel).text((6, 6), text, fill=(110, 110, 110), font=_font(TEXT))
    return np.asarray(panel)


def legend_entries(labels: Sequence[np.ndarray],
                   class_names: Sequence[str]) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of every class drawn in ``labels``, in class order, then "uncertain /
    ignored" when a map has 255; a label the names do not reach is "class N"."""
    present = sorted({int(v) for m in labels for v in np.unique(m)} - {0})
    colours = colour_labels(np.array(present, np.uint8)) if present else []
    return [("uncertain / ignored" if v == IGNORE else
             class_names[v - 1] if v <= len(class_names) else f"class {v}",
             tuple(int(c) for c in colour)) for v, colour in zip(present, colours, strict=True)]


def titled(panels: Sequence[tuple[str, np.ndarray]], caption: str,
           legend: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Panels of one size side by side, each under its title, a caption line above them and
    the legend (a swatch and a name per class, wrapped to the picture's width) below."""
    height, width = panels[0][1].shape[:2]
    total = len(panels) * width + (len(panels) - 1) * GAP
    font, line = _font(TEXT), TEXT + 8
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, y = [], GAP, 0  # where each legend entry goes, wrapped into lines
    for name, _ in legend:
        step = line + round(measure.textlength(name, font=font)) + 2 * GAP
        if x > GAP and x + step > total:
            x, y = GAP, y + line
        places.append((x, y))
        x += step
    top = 2 * line
    below = y + line + GAP if legend else 0
    canvas = Image.new("RGB", (total, top + height + below), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 4), caption, fill=(0, 0, 0), font=font)
    for i, (title, panel) in enumerate(panels):
        left = i * (width + GAP)
        draw.text((left + GAP, line + 2), title, fill=(60, 60, 60), font=font)
        canvas.paste(Image.fromarray(panel), (left, top))
    for (name, colour), (x, y) in zip(legend, places, strict=True):
        y += top + height + GAP
        draw.rectangle((x, y, x + TEXT, y + TEXT), fill=colour, outline=(120, 120, 120))
        draw.text((x + TEXT + GAP, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def overlay(cam_file: Path, mask_file: Path | None, gt: np.ndarray | None,
            class_names: Sequence[str] = (), caption: str = "", max_side: int = 320,
            truth_column: bool | None = None) -> np.ndarray:
    """One picture of one image: photo, CAM heatmap, pseudo-mask (when ``mask_file`` is given)
    and ground truth (``gt``; its column also shows, saying so, when ``truth_column`` and the
    image has none), each under its title and scaled so a panel's long side is ``max_side``,
    with ``caption`` above and a legend of the classes drawn below."""
    data = read_cam(cam_file)
    image = read_image(Path(str(data["image"])))
    cams = data["cams"].astype(np.float32)
    if cams.shape[1:] != image.shape[:2]:
        raise ImageProblem(f"{cam_file}: CAM and image sizes differ")
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    photo = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    peak = cams.max(axis=0) if len(cams) else np.zeros(image.shape[:2], np.float32)
    panels = [("photo", photo),
              ("CAM", heatmap(photo, cv2.resize(peak, size, interpolation=cv2.INTER_AREA)[None]))]
    drawn = [data["classes"].astype(np.int64) + 1]  # the classes of the heatmap
    columns: list[tuple[str, np.ndarray | None, str]] = []
    if mask_file is not None:
        columns.append(("mask", read_label_map(mask_file) if mask_file.is_file() else None,
                        "no mask file"))
    if gt is not None if truth_column is None else truth_column:
        columns.append(("ground truth", gt, "no ground truth"))
    for title, labels, missing in columns:
        if labels is None or labels.shape != image.shape[:2]:
            why = missing if labels is None else "another size than the photo"
            panels.append((title, _note(photo.shape[:2], why)))
            continue
        drawn.append(labels)
        panels.append((title, blend(photo, cv2.resize(labels, size,
                                                      interpolation=cv2.INTER_NEAREST))))
    return titled(panels, caption, legend_entries(drawn, class_names))


def _mask_scores(ids: Sequence[str], masks: Path, gt: GroundTruth) -> dict[str, float]:
    """Each image's mask mIoU against its ground truth; 0 for a mask missing, unreadable or of
    another size (as eval counts it), nothing for an image without readable ground truth."""
    score = {}
    for image_id in ids:
        if not gt.has(image_id):
            continue
        try:
            truth = gt.read(image_id)
        except ImageProblem:
            continue
        try:
            pred = read_label_map(RunDir.image_mask(masks, image_id))
            score[image_id] = image_miou(truth, pred) if pred.shape == truth.shape else 0.0
        except ImageProblem:
            score[image_id] = 0.0
    return score


def write_overlays(cams: Path, masks: Path | None, gt: GroundTruth | None, out: Path,
                   limit: int = 16, class_names: Sequence[str] = ()) -> list[Path]:
    """Up to ``limit`` overlay pictures into ``out``: with masks and ground truth, a third
    each of the worst, the median and the best images by their mask mIoU (named
    ``NN-group-id.jpg``, so they list in that order), else images spread evenly over the CAM
    files' ids (``NN-id.jpg``). Pictures of an earlier choice are removed. Returns the files."""
    ensure_dir(out)
    ids = [p.stem for p in RunDir.image_files(cams)]
    score = _mask_scores(ids, masks, gt) if masks is not None and gt is not None else {}
    chosen = pick(score, limit) if score else spread(ids, limit)
    written = []
    for n, (image_id, group) in enumerate(chosen, 1):
        truth = gt.read(image_id) if gt is not None and gt.has(image_id) else None
        caption = " · ".join([image_id, *([group] if group else []), *(
            [f"mask mIoU {100 * score[image_id]:.1f} %"] if image_id in score else [])])
        picture = overlay(RunDir.image_maps(cams, image_id),
                          RunDir.image_mask(masks, image_id) if masks else None, truth,
                          class_names, caption, truth_column=gt is not None)
        name = f"{n:02d}-{group}-{image_id}.jpg" if group else f"{n:02d}-{image_id}.jpg"
        written.append(write_image(out / name, Image.fromarray(picture), quality=90))
    for stale in set(out.glob("*.jpg")) - set(written):
        stale.unlink(missing_ok=True)
    return written
