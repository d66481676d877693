"""``igcam propose``: Selective Search boxes, filtered, suppressed, in original pixels."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import igcam
from PIL import Image
from torchvision.ops import box_iou

from igcam_cli.artifacts import read_npz
from igcam_cli.datasets import DatasetSpec
from igcam_cli.errors import IgcamError
from igcam_cli.steps.propose import ProposeConfig, propose


def _run(tiny_voc: Path, out: Path, **options: object) -> list[dict[str, np.ndarray]]:
    propose(ProposeConfig(run=out.parent, dataset=DatasetSpec(voc=tiny_voc), out=out,
                          **options))
    return [read_npz(p) for p in sorted(out.glob("*.npz"))]


def test_boxes_are_inside_filtered_suppressed_and_capped(tiny_voc: Path, tmp_path: Path) -> None:
    loose = _run(tiny_voc, tmp_path / "loose", min_size=0.0, max_aspect=100.0, nms_iou=1.0,
                 top=10_000)
    strict = _run(tiny_voc, tmp_path / "strict", min_size=0.25, max_aspect=2.0, nms_iou=0.5,
                  top=12)
    assert len(loose) == len(strict) == 24
    # The filters have something to do: the raw search gives small, thin and overlapping boxes.
    raw = np.concatenate([d["boxes"] for d in loose])
    sides = raw[:, 2:] - raw[:, :2]
    assert (sides.min(axis=1) < 16).any() and (sides.max(axis=1) > 2 * sides.min(axis=1)).any()
    assert max(len(d["boxes"]) for d in loose) > 12
    for data in strict:
        boxes, scores = data["boxes"], data["scores"]
        height, width = data["size"].tolist()
        assert (height, width) == (64, 64) and Path(str(data["image"])).is_file()
        assert boxes.dtype == np.int32 and scores.dtype == np.float32
        assert 1 <= len(boxes) <= 12 and boxes.shape == (len(scores), 4)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 3] <= height).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert (sides.min(axis=1) >= 16).all()
        assert (sides.max(axis=1) <= 2 * sides.min(axis=1)).all()
        iou = box_iou(torch.from_numpy(boxes).float(), torch.from_numpy(boxes).float())
        assert (iou.fill_diagonal_(0) <= 0.5).all()
        assert (np.diff(scores) < 0).all() and 0 < scores.min() and scores.max() <= 1
    assert max(len(d["boxes"]) for d in strict) == 12


def test_boxes_map_back_to_the_original_pixels(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    image = np.full((600, 800, 3), 60, dtype=np.uint8)
    image[150:410, 220:570] = (230, 200, 40)  # x 220..570, y 150..410 (exclusive)
    Image.fromarray(image).save(folder / "rect.png")
    out = tmp_path / "out"
    # The search sees a 100 x 75 copy, where the rectangle spans x 27.5..71, y 18.75..51.
    propose(ProposeConfig(run=tmp_path, dataset=DatasetSpec(images=folder), out=out, size=100,
                          mode="single"))
    data = read_npz(out / "rect.npz")
    assert data["size"].tolist() == [600, 800]
    truth = torch.tensor([[220.0, 150.0, 570.0, 410.0]])
    assert box_iou(torch.from_numpy(data["boxes"]).float(), truth).max() > 0.7


def test_rerun_skips_done_images_and_repeats_the_same_boxes(tiny_voc: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "propose"
    first = _run(tiny_voc, out, top=20)
    stamps = [p.stat().st_mtime_ns for p in sorted(out.glob("*.npz"))]
    made = (out / "manifest.json").read_text()
    _run(tiny_voc, out, top=20)
    # a rerun that only skipped keeps the manifest of the work that made the files
    assert (out / "manifest.json").read_text() == made
    assert json.loads(made)["counts"] == {"failed": 0, "skipped_done": 0, "processed": 24}
    assert stamps == [p.stat().st_mtime_ns for p in sorted(out.glob("*.npz"))]
    # Fresh worker processes, in another order, give the very same boxes and ranks.
    again = _run(tiny_voc, out, top=20, overwrite=True, workers=2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"failed": 0, "skipped_done": 0, "processed": 24}
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a["boxes"], b["boxes"]) and np.array_equal(a["scores"], b["scores"])


def test_shard_writes_only_its_share(tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "propose"
    propose(ProposeConfig(run=tmp_path, dataset=DatasetSpec(voc=tiny_voc), out=out,
                          mode="single", shard="1/3"))
    ids = (tiny_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(ids[1::3])
    manifest = json.loads((out / "manifest.shard-1-of-3.json").read_text())
    assert manifest["counts"]["processed"] == 8 and not (out / "manifest.json").exists()


@pytest.mark.parametrize("cv2", [None, types.ModuleType("cv2")], ids=["missing", "no-contrib"])
def test_missing_ximgproc_is_a_clear_error(cv2: types.ModuleType | None, tiny_voc: Path,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", cv2)  # None makes `import cv2` fail
    with pytest.raises(IgcamError, match="opencv-contrib-python-headless"):
        propose(ProposeConfig(run=tmp_path, dataset=DatasetSpec(voc=tiny_voc)))
    assert not (tmp_path / "propose").exists()


@pytest.mark.parametrize(("option", "value"), [("size", 16), ("top", 0), ("nms_iou", 0.0),
                                               ("nms_iou", 1.5), ("min_size", 1.0),
                                               ("max_aspect", 0.5)])
def test_bad_option_values(option: str, value: float, tiny_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(IgcamError, match="--" + option.replace("_", "-")):
        propose(ProposeConfig(run=tmp_path, dataset=DatasetSpec(voc=tiny_voc),
                              **{option: value}))


def test_unknown_mode_is_a_one_line_error(tiny_voc: Path, tmp_path: Path) -> None:
    result = igcam("propose", "--run", tmp_path, "--voc", tiny_voc, "--mode", "slow")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--mode" in lines[0], lines
