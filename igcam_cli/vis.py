"""Overlay pictures: image | CAM heatmap | pseudo-mask | ground truth, side by side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from igcam_cli.artifacts import RunDir, ensure_dir, read_cam, write_image
from igcam_cli.datasets import GroundTruth
from igcam_cli.errors import ImageProblem
from igcam_cli.images import IGNORE, read_image, read_label_map, voc_palette


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """VOC colours, with 255 (uncertain / ignored) drawn white."""
    palette = voc_palette()
    palette[IGNORE] = (255, 255, 255)
    return palette[labels]


def heatmap(image: np.ndarray, cams: np.ndarray) -> np.ndarray:
    peak = cams.max(axis=0) if len(cams) else np.zeros(image.shape[:2], np.float32)
    colour = cv2.applyColorMap((np.clip(peak, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (0.5 * image + 0.5 * colour[..., ::-1]).astype(np.uint8)


def blend(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (0.4 * image + 0.6 * colour_labels(labels)).astype(np.uint8)


def overlay(cam_file: Path, mask_file: Path | None, gt: np.ndarray | None,
            max_side: int = 320) -> np.ndarray:
    """One row of panels for one image (its ground truth ``gt`` last, when there is one),
    scaled so its long side is ``max_side``."""
    data = read_cam(cam_file)
    image = read_image(Path(str(data["image"])))
    cams = data["cams"].astype(np.float32)
    if cams.shape[1:] != image.shape[:2]:
        raise ImageProblem(f"{cam_file}: CAM and image sizes differ")
    panels = [image, heatmap(image, cams)]
    mask = read_label_map(mask_file) if mask_file is not None and mask_file.is_file() else None
    for labels in (mask, gt):
        if labels is not None and labels.shape == image.shape[:2]:
            panels.append(blend(image, labels))
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    gap = np.full((size[1], 4, 3), 255, np.uint8)
    resized = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in panels]
    return np.concatenate([x for p in resized for x in (p, gap)][:-1], axis=1)


def write_overlays(cams: Path, masks: Path | None, gt: GroundTruth | None, out: Path,
                   limit: int = 16) -> list[Path]:
    """Overlays for the first ``limit`` CAM files (sorted by id); returns the written files."""
    ensure_dir(out)
    written = []
    for cam_file in RunDir.image_files(cams)[:limit]:
        image_id = cam_file.stem
        truth = gt.read(image_id) if gt is not None and gt.has(image_id) else None
        picture = overlay(cam_file, RunDir.image_mask(masks, image_id) if masks else None, truth)
        written.append(write_image(out / f"{image_id}.jpg", Image.fromarray(picture),
                                   quality=90))
    return written
