"""Image tensors and the IRN-style training augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) batch, antialiased when shrinking."""
    if tuple(images.shape[-2:]) == size:
        return images
    shrink = size[0] < images.shape[-2]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_keeping_peaks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) maps resized (bilinear, antialiased when shrinking), each scaled back to its
    own maximum: resampling lowers a sharp peak, and a CAM's peak says how surely its class
    fires (1 after ``normalise``, smaller for a map that barely fires). An all-zero map stays
    zero. How ``cam --store-stride`` shrinks maps and ``read_cam`` enlarges them."""
    if not len(maps):
        return maps.new_zeros((0, *size), dtype=torch.float32)
    resized = resize(maps[None].float(), size)[0]
    before, after = (m.flatten(1).amax(1) for m in (maps.float(), resized))
    scale = torch.where(after > 0, before / after.clamp_min(1e-30), torch.zeros_like(after))
    return resized * scale[:, None, None]


def normalise(maps: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    """Divide every map (the last two dimensions) by its own maximum, at least ``floor``.

    The 1e-5 floor is IRN's: an all-zero map stays zero instead of becoming NaN, and a map
    that barely fires is not stretched to a confident 1.
    """
    peak = maps.flatten(-2).max(dim=-1).values.clamp_min(floor)
    return maps / peak[..., None, None]


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(int(round(height * scale)), 16), max(int(round(width * scale)), 16)


def train_augment(image: torch.Tensor, crop: int, rng: np.random.Generator,
                  fill: tuple[float, float, float]) -> torch.Tensor:
    """Random long side in [0.625, 1.25] x crop, horizontal flip, random crop padded with ``fill``.

    The same proportions as IRN's 320-640 resize and 512 crop, so the recipe scales with
    ``--crop`` to datasets whose images are smaller or larger than VOC's.
    """
    _, height, width = image.shape
    long_side = rng.uniform(0.625, 1.25) * crop
    scale = long_side / max(height, width)
    image = resize(image[None], scaled_size(height, width, scale))[0]
    if rng.random() < 0.5:
        image = image.flip(-1)
    _, height, width = image.shape
    canvas = torch.tensor(fill).view(3, 1, 1).expand(3, crop, crop).clone()
    top = rng.integers(0, max(height - crop, 0) + 1)
    left = rng.integers(0, max(width - crop, 0) + 1)
    patch = image[:, top:top + crop, left:left + crop]
    off_y = rng.integers(0, crop - patch.shape[1] + 1)
    off_x = rng.integers(0, crop - patch.shape[2] + 1)
    canvas[:, off_y:off_y + patch.shape[1], off_x:off_x + patch.shape[2]] = patch
    return canvas


def seg_augment(image: torch.Tensor, mask: torch.Tensor, crop: int, rng: np.random.Generator,
                fill: tuple[float, float, float], ignore: int,
                scale_range: tuple[float, float] = (0.5, 1.5)
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (3, H, W) and its label map (H, W) scaled by one random factor in
    ``scale_range`` (the map by nearest neighbour, so no label is invented), flipped together
    half of the time, and cut to one random ``crop`` square: where the scaled image is smaller
    than the crop, the image is padded with ``fill`` and the map with ``ignore``, so padding
    adds no loss."""
    _, height, width = image.shape
    size = scaled_size(height, width, rng.uniform(*scale_range))
    image = resize(image[None], size)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    if rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    height, width = size
    canvas = torch.tensor(fill).view(3, 1, 1).expand(3, crop, crop).clone()
    labels = torch.full((crop, crop), float(ignore))
    top = rng.integers(0, max(height - crop, 0) + 1)
    left = rng.integers(0, max(width - crop, 0) + 1)
    patch = image[:, top:top + crop, left:left + crop]
    off_y = rng.integers(0, crop - patch.shape[1] + 1)
    off_x = rng.integers(0, crop - patch.shape[2] + 1)
    rows, cols = slice(off_y, off_y + patch.shape[1]), slice(off_x, off_x + patch.shape[2])
    canvas[:, rows, cols] = patch
    labels[rows, cols] = mask[top:top + crop, left:left + crop]
    return canvas, labels.to(torch.uint8)
