"""``igcam export``: every format read back with the tools that read it (pycocotools, PIL) and
compared with the mask PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harness import igcam, ok, one_line_error
from PIL import Image
from pycocotools.coco import COCO

from igcam_cli.images import IGNORE, save_label_map

CLASSES = ("cat", "dog", "bird")


@pytest.fixture()
def masks(tmp_path: Path) -> dict[str, np.ndarray]:
    """Three masks: two blobs of class 1, one of class 3, uncertain pixels, a speck."""
    folder = tmp_path / "masks"
    folder.mkdir()
    made = {}
    for index in range(3):
        labels = np.zeros((40, 50 + index), np.uint8)
        labels[2:12, 2:12] = 1
        labels[20:30, 30:45] = 1
        labels[25:35, 5:15] = 3
        labels[0:2, 40:50] = IGNORE
        labels[38, 0] = 2  # a speck: 1 pixel
        save_label_map(folder / f"img{index}.png", labels)
        made[f"img{index}"] = labels
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return made


def _drawn(coco: COCO, image_id: int) -> np.ndarray:
    info = coco.imgs[image_id]
    labels = np.zeros((info["height"], info["width"]), np.uint8)
    for annotation in coco.imgToAnns[image_id]:
        labels[coco.annToMask(annotation) > 0] = annotation["category_id"]
    return labels


def _export(tmp_path: Path, fmt: str, out: Path, *extra: str) -> None:
    ok(igcam("export", "--masks", tmp_path / "masks", "--format", fmt, "--out", out,
             "--classes", tmp_path / "classes.txt", *extra))


def test_coco_semantic_reads_back_as_the_masks(masks: dict, tmp_path: Path) -> None:
    out = tmp_path / "masks.json"
    _export(tmp_path, "coco", out)
    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    for image_id, info in coco.imgs.items():
        expected = masks[info["file_name"]]
        assert np.array_equal(_drawn(coco, image_id), np.where(expected == IGNORE, 0, expected))
        assert len(coco.imgToAnns[image_id]) == 3  # one per class present


def test_instances_are_components_above_the_minimum_area(masks: dict, tmp_path: Path) -> None:
    out = tmp_path / "instances.json"
    _export(tmp_path, "instances", out, "--min-area", "4")
    coco = COCO(str(out))
    for image_id, info in coco.imgs.items():
        annotations = coco.imgToAnns[image_id]
        assert sorted(a["category_id"] for a in annotations) == [1, 1, 3]  # no speck
        expected = masks[info["file_name"]].copy()
        expected[(expected == IGNORE) | (expected == 2)] = 0
        assert np.array_equal(_drawn(coco, image_id), expected)
        assert sorted(a["area"] for a in annotations) == [100, 100, 150]


def test_index_pngs_hold_the_raw_ids(masks: dict, tmp_path: Path) -> None:
    out = tmp_path / "index"
    _export(tmp_path, "index", out)
    for name, labels in masks.items():
        image = Image.open(out / f"{name}.png")
        assert image.mode == "L" and np.array_equal(np.asarray(image), labels)


def test_export_refuses_what_it_cannot_write(masks: dict, tmp_path: Path) -> None:
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    one_line_error(igcam("export", "--masks", tmp_path / "masks", "--out", tmp_path / "x.json",
                         "--classes", tmp_path / "two.txt"), "has class 3", "--classes")
    one_line_error(igcam("export", "--masks", tmp_path, "--out", tmp_path / "x.json"),
                   "no mask PNGs")
    one_line_error(igcam("export", "--masks", tmp_path / "masks", "--format", "voc",
                         "--out", tmp_path / "x"), "--format")
