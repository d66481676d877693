from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcam_cli.errors import ImageProblem
from igcam_cli.images import read_image, read_label_map, save_label_map, voc_palette


def test_voc_palette_matches_pascal() -> None:
    palette = voc_palette()
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "RGB"])
def test_any_image_mode_becomes_rgb_uint8(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    image.save(path)
    array = read_image(path)
    assert array.shape == (20, 30, 3) and array.dtype == np.uint8
    if mode == "I;16":
        assert array.max() > 200  # 16-bit range scaled into 8 bits, not clipped to white/black


def test_corrupt_and_missing_images_are_image_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageProblem, match="bad.jpg"):
        read_image(bad)
    with pytest.raises(ImageProblem, match="not found"):
        read_image(tmp_path / "missing.jpg")


def test_label_maps_roundtrip_palette_and_colour(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 255], [15, 20, 0]], dtype=np.uint8)
    save_label_map(tmp_path / "m.png", labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert (read_label_map(tmp_path / "m.png") == labels).all()
    Image.fromarray(voc_palette()[labels]).save(tmp_path / "rgb.png")
    assert (read_label_map(tmp_path / "rgb.png") == labels).all()


def test_real_voc_masks_keep_boundary_band(voc_sample: Path) -> None:
    mask = read_label_map(voc_sample / "SegmentationClass" / "2011_000003.png")
    values = set(np.unique(mask).tolist())
    assert 255 in values and 0 in values and values - {0, 255} <= set(range(1, 21))
