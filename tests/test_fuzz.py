"""Every step on corrupted inputs: a warning or one error line, never a traceback, nothing
outside the run directory, no half-written file, a manifest that matches the files.

One seeded round per step here; ``bench/fuzz.py`` runs many (its figures are in
bench/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzzing import FILE_CORRUPTIONS, NPZ_CORRUPTIONS, check_run, corrupt_copy, snapshot
from harness import igcam

SEED = 0


@pytest.mark.parametrize("step", ["train-cls", "propose", "cam", "influence"])
def test_steps_on_corrupted_images(step: str, trained_run: Path, tiny_voc: Path,
                                   tmp_path: Path) -> None:
    rng = np.random.default_rng((SEED, len(step)))
    data = tmp_path / "data"
    done = corrupt_copy(tiny_voc, data, "JPEGImages/*.jpg", FILE_CORRUPTIONS, rng, 6)
    run = tmp_path / "run"
    checkpoint = ("--checkpoint", trained_run / "train-cls" / "classifier.pt")
    args = {
        "train-cls": ("--epochs", "1", "--crop", "64", "--batch-size", "8", "--loader-workers",
                      "0", "--device", "cpu"),
        "propose": ("--mode", "single"),
        "cam": (*checkpoint, "--scales", "1.0", "--device", "cpu"),
        "influence": (*checkpoint, "--device", "cpu"),
    }[step]
    before = snapshot(tmp_path)
    result = igcam(step, "--run", run, "--voc", data, *args)
    outputs = {"propose": (run / "propose", ".npz"), "cam": (run / "cam", ".npz"),
               "influence": (run / "influence" / "maps", ".npz")}.get(step, (None, ""))
    if step == "influence" and result.returncode == 0:  # its manifest is the folder above
        outputs = (None, "")
    problems = check_run(result, tmp_path, before, [run], *outputs)
    assert not problems, (done, problems, result.stderr[-2000:])
    assert result.returncode == 0 and "failed" in result.stderr, (done, result.stderr[-2000:])


@pytest.mark.parametrize("step", ["refine", "eval"])
def test_steps_on_corrupted_cam_files(step: str, cam_run: Path, tiny_voc: Path,
                                      tmp_path: Path) -> None:
    rng = np.random.default_rng((SEED, len(step)))
    cams = tmp_path / "cams"
    done = corrupt_copy(cam_run / "cam", cams, "*.npz", NPZ_CORRUPTIONS, rng, 8)
    run = tmp_path / "run"
    before = snapshot(tmp_path)
    if step == "refine":
        result = igcam("refine", "--run", run, "--cams", cams, "--method", "none")
        problems = check_run(result, tmp_path, before, [run], run / "refine-none", ".png")
    else:
        result = igcam("eval", "--cams", cams, "--voc", tiny_voc, "--out", run / "seed.json")
        problems = check_run(result, tmp_path, before, [run], None, "")
    assert not problems, (done, problems, result.stderr[-2000:])
    assert result.returncode == 0, (done, result.stderr[-2000:])


def test_eval_on_corrupted_masks(tiny_voc: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    pred = tmp_path / "pred"
    done = corrupt_copy(tiny_voc / "SegmentationClass", pred, "*.png", FILE_CORRUPTIONS, rng, 6)
    before = snapshot(tmp_path)
    result = igcam("eval", "--pred", pred, "--voc", tiny_voc, "--out", tmp_path / "run" / "m.json")
    assert not check_run(result, tmp_path, before, [tmp_path / "run"], None, ""), done
    assert result.returncode == 0 and "count as all-wrong" in result.stderr, result.stderr
