"""A procedurally generated dataset in PASCAL VOC layout for demos and end-to-end tests.

Real VOC is a large download, yet the pipeline should be runnable anywhere in minutes.
The classes here differ in both shape and texture, so a small pretrained CNN fine-tuned on
image-level labels learns them quickly and its class activation maps land on the objects.
Textures span whole objects and backgrounds carry clutter, so a CAM that covers only the most
distinctive part of an object, or fires on any edge, does not match the mask by accident.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from igcam_cli.artifacts import write_bytes, write_image
from igcam_cli.images import IGNORE, save_label_map

DEMO_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "star", "ring")

_HUES = (0.0, 220.0, 120.0, 50.0, 290.0)  # characteristic hue (degrees) of each class
_MAX_OCCLUDED = 0.4  # a later object may hide at most this fraction of an earlier one
_SUBPIXEL = 4  # cv2 fixed-point shift, so small rotations still move the outline smoothly

Rgb = np.ndarray  # float32 colour of shape (3,), 0..255


def _hsv(hue_deg: float, sat: float, val: float) -> Rgb:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val), np.float32) * 255


def _muted(rng: np.random.Generator) -> Rgb:
    """Background colours are desaturated so objects stand out without being trivial."""
    return _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.95))


def _background(rng: np.random.Generator, size: int, grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """A linear gradient, low-frequency colour blobs, or a blend of both."""
    yy, xx = grid
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / size
    t = ((t - t.min()) / (t.max() - t.min()))[..., None]
    gradient = _muted(rng) * (1 - t) + _muted(rng) * t
    cells = int(rng.integers(3, 7))
    coarse = np.stack([_muted(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
    blobs = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    weight = rng.choice([0.0, 0.5, 1.0])
    return np.clip(weight * gradient + (1 - weight) * blobs, 0, 255).astype(np.float32)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Thin lines, crosses and slim ellipses: small edges that belong to no class."""
    size = image.shape[0]
    for _ in range(int(rng.integers(2, 7))):
        p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), _muted(rng).tolist(), 1)
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        half = max(2, int(rng.uniform(0.02, 0.035) * size))  # whole shape < 8% of the side
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.2, 0.9), rng.uniform(0.2, 1.0)).tolist()
        if rng.random() < 0.5:
            cv2.line(image, (cx - half, cy), (cx + half, cy), colour, 2)
            cv2.line(image, (cx, cy - half), (cx, cy + half), colour, 2)
        else:
            axes = (half, max(1, half // 3))
            cv2.ellipse(image, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)


def _polygon(cx: float, cy: float, radii: list[float], rotation: float) -> np.ndarray:
    angles = rotation + np.arange(len(radii)) * 2 * np.pi / len(radii)
    points = np.stack([cx + np.cos(angles) * radii, cy + np.sin(angles) * radii], axis=1)
    return np.round(points * (1 << _SUBPIXEL)).astype(np.int32)


def _shape_mask(cls: int, size: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """Boolean mask of one object; the ring's hole is background, as it would be in VOC."""
    mask = np.zeros((size, size), np.uint8)
    centre, scale = (round(cx * (1 << _SUBPIXEL)), round(cy * (1 << _SUBPIXEL))), 1 << _SUBPIXEL
    name = DEMO_CLASSES[cls]
    if name in ("disc", "ring"):
        cv2.circle(mask, centre, round(r * scale), 1, -1, cv2.LINE_8, _SUBPIXEL)
        if name == "ring":
            cv2.circle(mask, centre, round(0.5 * r * scale), 0, -1, cv2.LINE_8, _SUBPIXEL)
    else:
        radii = {"square": [r] * 4, "triangle": [1.15 * r] * 3, "star": [r, 0.45 * r] * 5}[name]
        cv2.fillPoly(mask, [_polygon(cx, cy, radii, rot)], 1, cv2.LINE_8, _SUBPIXEL)
    return mask.astype(bool)


def _texture(
    cls: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, r: float
) -> np.ndarray:
    """Class-specific fill in object coordinates (u, v), so patterns rotate and scale with it."""
    base = _hsv(_HUES[cls] + rng.uniform(-12, 12), rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
    period = r * rng.uniform(0.35, 0.5)
    name = DEMO_CLASSES[cls]
    if name == "disc":  # parallel stripes with a pale second colour
        on = np.sin(v * 2 * np.pi / period) > 0
        second = base * 0.4 + 255 * 0.6
    elif name == "square":  # checkerboard against a dark shade
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        second = base * 0.3
    elif name == "triangle":  # light dots on a regular grid
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        on = du * du + dv * dv > (0.28 * period) ** 2
        second = base * 0.2 + 255 * 0.8
    elif name == "star":  # solid with grain
        return base + rng.normal(0, 18, u.shape + (3,)).astype(np.float32)
    else:  # ring: gradient around the circumference towards a shifted, darker hue
        t = ((np.arctan2(v, u) + np.pi) / (2 * np.pi))[..., None]
        other = _hsv(_HUES[cls] + 40 + rng.uniform(-10, 10), 0.9, 0.45)
        return base * (1 - t) + other * t
    return np.where(on[..., None], base, second)


def _render(
    rng: np.random.Generator, classes: list[int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label map; objects are re-placed until none is mostly hidden."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, size, tuple(grid))
    _draw_clutter(rng, image)
    label = np.zeros((size, size), np.uint8)
    for cls in classes:
        while True:
            r = rng.uniform(0.25, 0.55) * size / 2
            cx, cy = rng.uniform(0.8 * r, size - 0.8 * r, 2)
            rot = rng.uniform(0, 2 * np.pi)
            mask = _shape_mask(cls, size, cx, cy, r, rot)
            if all(_occluded(label, mask, other) <= _MAX_OCCLUDED for other in np.unique(label)):
                break
        dy, dx = grid[0] - cy, grid[1] - cx
        u, v = dx * np.cos(rot) + dy * np.sin(rot), -dx * np.sin(rot) + dy * np.cos(rot)
        image[mask] = _texture(cls, rng, u, v, r)[mask]
        label[mask] = cls + 1
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.9))
    image += rng.normal(0, 3, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), _with_boundary(label)


def _occluded(label: np.ndarray, mask: np.ndarray, value: int) -> float:
    """Fraction of the visible pixels of ``value`` that ``mask`` would cover (0 for background)."""
    visible = label == value
    return float((visible & mask).sum() / visible.sum()) if value else 0.0


def _with_boundary(label: np.ndarray) -> np.ndarray:
    """Mark pixels next to a label change as ignore, like the uncertain band of VOC masks."""
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    return np.where(edge, IGNORE, label).astype(np.uint8)


def _pick_classes(rng: np.random.Generator, counts: np.ndarray) -> list[int]:
    """1-3 distinct classes, favouring the least used so every class gets about as many images."""
    k = int(rng.integers(1, 4))
    order = np.lexsort((rng.random(len(counts)), counts))[:k]
    counts[order] += 1
    return [int(c) for c in rng.permutation(order)]


def _is_complete(root: Path, n_train: int) -> bool:
    """classes.txt is written last, so its presence plus a full id list means nothing is missing."""
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    if not (root / "classes.txt").is_file() or not split.is_file():
        return False
    ids = split.read_text().split()
    return len(ids) == n_train and all(
        (root / "JPEGImages" / f"{i}.jpg").is_file()
        and (root / "SegmentationClass" / f"{i}.png").is_file()
        for i in ids
    )


def make_demo_dataset(root: Path, n_train: int = 240, size: int = 160, seed: int = 0) -> Path:
    """Write the dataset under root and return root.

    The same seed gives byte-identical files. An already complete dataset of ``n_train`` images
    is left untouched, so demo commands can call this on every run for free.
    """
    root = Path(root)
    if _is_complete(root, n_train):
        return root
    folders = [root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(DEMO_CLASSES), np.int64)
    ids = [f"demo_{index:04d}" for index in range(n_train)]
    for image_id in ids:
        image, label = _render(rng, _pick_classes(rng, counts), size)
        write_image(folders[0] / f"{image_id}.jpg", Image.fromarray(image), quality=95)
        save_label_map(folders[1] / f"{image_id}.png", label)
    write_bytes(folders[2] / "train.txt", "".join(f"{i}\n" for i in ids).encode())
    # classes.txt last: its presence marks a complete dataset (see _is_complete).
    write_bytes(root / "classes.txt", "".join(f"{c}\n" for c in DEMO_CLASSES).encode())
    return root
