"""Reading photographs and label maps the way users actually have them.

Photos arrive as JPEG/PNG in grayscale, RGBA, palette or 16-bit form; label maps as VOC palette
PNGs, plain 8-bit PNGs (SegmentationClassAug) or colour PNGs. Everything is normalised here so
the steps only ever see ``uint8`` RGB images and ``uint8`` label maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from igcam_cli.artifacts import write_image
from igcam_cli.errors import ImageProblem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE = 255


def voc_palette() -> np.ndarray:
    """The 256-entry PASCAL VOC colour map (bit-interleaved class index), shape (256, 3)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


# PIL refuses images past this many pixels (about 179 million) as decompression bombs.
MAX_IMAGE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


def _too_large(path: Path) -> ImageProblem:
    """PIL refuses images past about 179 megapixels: a decompression bomb or a scan no CAM
    step could hold in memory, so it is that image's problem, not the step's crash."""
    return ImageProblem(f"{path}: image too large (over {MAX_IMAGE_PIXELS:,} pixels, "
                        "PIL's decompression-bomb limit)")


def _open(path: Path, max_side: int | None = None) -> Image.Image:
    try:
        image = Image.open(path)
        if max_side is not None and max(image.size) > max_side:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale directly: a huge photo never fills memory.
            image.draft("RGB", (max_side, max_side))
        image.load()
    except FileNotFoundError:
        raise ImageProblem(f"{path}: file not found") from None
    except Image.DecompressionBombError:
        raise _too_large(path) from None
    except Exception as exc:  # noqa: BLE001 - damaged files fail in every decoder's own way
        raise ImageProblem(f"{path}: unreadable or corrupt image ({exc})") from None
    return image


def read_image(path: Path, max_side: int | None = None) -> np.ndarray:
    """An RGB ``uint8`` array (H, W, 3) from any common image mode.

    With ``max_side``, an image whose longer side exceeds it comes back shrunk (antialiased,
    aspect kept) so that its longer side is ``max_side``; smaller images are untouched.
    """
    image = _open(path, max_side)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: scale the used range down to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        top = max(float(array.max()), 1.0)
        scale = 65535.0 if top > 255 and top <= 65535 else top
        array = np.clip(array / scale * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels onto white rather than keeping arbitrary colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    array = np.array(image, dtype=np.uint8)
    if array.shape[0] < 8 or array.shape[1] < 8:
        raise ImageProblem(f"{path}: image too small ({array.shape[1]}x{array.shape[0]})")
    return array


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise ImageProblem(f"{path}: file not found") from None
    except Image.DecompressionBombError:
        raise _too_large(path) from None
    except Exception as exc:  # noqa: BLE001 - a damaged header fails in many ways
        raise ImageProblem(f"{path}: unreadable or corrupt image ({exc})") from None


def read_label_map(path: Path) -> np.ndarray:
    """Class indices (H, W) ``uint8`` from a palette, grayscale or VOC-coloured PNG."""
    image = _open(path)
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        palette = voc_palette().astype(np.int32)
        keys = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8)
        codes |= rgb[..., 2]
        lookup = dict(zip(keys.tolist(), range(256), strict=True))
        unique, inverse = np.unique(codes, return_inverse=True)
        try:
            mapped = np.array([lookup[int(code)] for code in unique], dtype=np.uint8)
        except KeyError:
            raise ImageProblem(f"{path}: colour mask has colours outside the VOC palette") from None
        return mapped[inverse].reshape(rgb.shape[:2])
    raise ImageProblem(f"{path}: unsupported label map mode {image.mode}")


def save_label_map(path: Path, labels: np.ndarray) -> Path:
    """Write a VOC palette PNG (0 background, 1..C classes, 255 uncertain)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().flatten().tolist())
    return write_image(path, image, optimize=False)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
