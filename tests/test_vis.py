"""Pictures of masks: every class colour shows on any photo, and the ``vis/`` overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from igcam_cli.artifacts import RunDir, ensure_dir
from igcam_cli.datasets import MaskFolder
from igcam_cli.images import IGNORE, read_label_map, save_label_map
from igcam_cli.metrics import confusion, scores
from igcam_cli.vis import (
    GAP,
    LUMA,
    TEXT,
    blend,
    legend_entries,
    outline,
    overlay,
    write_overlays,
)


def _tiles() -> np.ndarray:
    """A label map with one 12 x 12 tile of each of the 20 VOC classes and an ignored strip."""
    labels = np.zeros((40, 220), np.uint8)
    for c in range(1, 21):
        row, column = divmod(c - 1, 10)
        labels[4 + 18 * row:16 + 18 * row, 4 + 21 * column:16 + 21 * column] = c
    labels[36:39, 10:60] = IGNORE
    return labels


@pytest.mark.parametrize("grey", [30, 128, 225])  # a dark, a mid-grey and a light photo
def test_every_class_stands_out_and_the_background_stays_the_photo(grey: int) -> None:
    labels = _tiles()
    photo = np.full((*labels.shape, 3), grey, np.uint8)
    picture = blend(photo, labels)
    assert (picture[labels == 0] == photo[labels == 0]).all()  # not darkened
    edge = outline(labels)
    for c in range(1, 21):
        region = labels == c
        assert edge[region].sum() == 44  # the tile's inner edge: 4 * 12 - 4 pixels
        fill = picture[region & ~edge].astype(np.float32) @ LUMA
        rim = picture[region & edge].astype(np.float32) @ LUMA
        contrast = max(abs(fill.mean() - grey), abs(rim.mean() - grey))
        assert contrast >= 60, (c, grey, contrast)


def test_outline_marks_class_edges_only() -> None:
    labels = np.zeros((5, 5), np.uint8)
    labels[1:4, 1:4] = 3
    labels[0, :] = IGNORE
    edge = outline(labels)
    assert edge[1:4, 1:4].sum() == 8 and not edge[2, 2]  # the ring, not the middle
    assert not edge[0].any() and not edge[4].any()  # ignored and background pixels: never


@pytest.fixture()
def masks(cam_run: Path, tiny_voc: Path, tmp_path: Path) -> Path:
    """Pseudo-masks of the tiny run: the ground truth itself for demo_0000..0003, all
    background for the others (each then scores by how much of it is background)."""
    folder = ensure_dir(tmp_path / "refine")
    for path in RunDir.image_files(cam_run / "cam"):
        gt = read_label_map(tiny_voc / "SegmentationClass" / f"{path.stem}.png")
        perfect = path.stem <= "demo_0003"
        save_label_map(RunDir.image_mask(folder, path.stem), gt if perfect else gt * 0)
    return folder


def _miou(tiny_voc: Path, masks: Path, image_id: str) -> float:
    gt = read_label_map(tiny_voc / "SegmentationClass" / f"{image_id}.png")
    return scores(confusion(gt, read_label_map(RunDir.image_mask(masks, image_id)), 6)).miou


def test_overlays_are_the_worst_the_median_and_the_best_with_titles_and_legend(
        cam_run: Path, tiny_voc: Path, masks: Path, tmp_path: Path) -> None:
    gt = MaskFolder(tiny_voc / "SegmentationClass")
    names = (tiny_voc / "classes.txt").read_text().split()
    out = tmp_path / "vis"
    out.mkdir()
    (out / "demo_0000.jpg").write_bytes(b"an overlay of an earlier choice")
    written = write_overlays(cam_run / "cam", masks, gt, out, 3, names)
    ranked = sorted((_miou(tiny_voc, masks, p.stem), p.stem)
                    for p in RunDir.image_files(cam_run / "cam"))
    assert [p.name for p in written] == [f"01-worst-{ranked[0][1]}.jpg",
                                         f"02-median-{ranked[12][1]}.jpg",
                                         "03-best-demo_0003.jpg"]
    assert sorted(out.iterdir()) == written  # the earlier picture is gone

    panel = 320
    picture = overlay(RunDir.image_maps(cam_run / "cam", "demo_0003"),
                      RunDir.image_mask(masks, "demo_0003"), gt.read("demo_0003"), names,
                      "demo_0003 · best")
    assert picture.shape[1] == 4 * panel + 3 * GAP  # photo, CAM, mask, ground truth
    top = 2 * (TEXT + 8)  # a caption line and the column titles above the panels
    assert (picture[:TEXT + 8, :panel] < 128).any()  # the caption
    for column in range(4):  # each column's title is drawn above its panel
        left = column * (panel + GAP)
        assert (picture[TEXT + 8:top, left:left + panel] < 128).any()
    below = picture[top + panel:]
    assert below.shape[0] > TEXT  # the legend
    present = sorted(set(np.unique(gt.read("demo_0003"))) - {0})
    entries = legend_entries([gt.read("demo_0003")], names)
    assert [e[0] for e in entries] == [names[c - 1] if c != IGNORE else "uncertain / ignored"
                                       for c in present]
    for _, colour in entries:  # each swatch is in the legend strip
        assert (below == colour).all(axis=-1).any(), colour


def test_without_ground_truth_overlays_spread_over_the_images(
        cam_run: Path, masks: Path, tmp_path: Path) -> None:
    written = write_overlays(cam_run / "cam", masks, None, tmp_path / "vis", 4, ())
    assert [p.name for p in written] == ["01-demo_0000.jpg", "02-demo_0008.jpg",
                                         "03-demo_0015.jpg", "04-demo_0023.jpg"]
    legend = legend_entries([np.array([[0, 1, 7]], np.uint8)], ["disc"])
    assert [name for name, _ in legend] == ["disc", "class 7"]  # a label past the names
