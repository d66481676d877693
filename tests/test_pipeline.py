"""Every step through the real CLI on a tiny generated dataset, on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import PROCESS_ENV, igcam, igcam_command
from PIL import Image

from igcam_cli.artifacts import read_cam
from igcam_cli.demo_data import make_demo_dataset


def test_train_cls_writes_checkpoint_metrics_and_manifest(trained_run: Path) -> None:
    folder = trained_run / "train-cls"
    assert (folder / "classifier.pt").is_file()
    history = json.loads((folder / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0 <= h["train_map"] <= 1 for h in history)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["images"] == 24
    assert manifest["inputs"]["class_names"][0] == "disc"


def test_cam_refine_eval_chain(own_run: Path, tiny_voc: Path) -> None:
    result = igcam("cam", "--run", own_run, "--voc", tiny_voc, "--scales", "1.0,0.5",
                   "--device", "cpu")
    assert result.returncode == 0, result.stderr
    files = sorted((own_run / "cam").glob("*.npz"))
    assert len(files) == 24
    data = read_cam(files[0])
    mask = np.array(Image.open(tiny_voc / "SegmentationClass" / f"{files[0].stem}.png"))
    expected = sorted(int(v) - 1 for v in set(mask.flat) - {0, 255})
    assert data["classes"].tolist() == expected
    assert data["cams"].dtype == np.float16 and data["cams"].shape[1:] == mask.shape
    # Max-normalised: each class map peaks at 1, or is all zero where the (barely trained)
    # classifier has no positive evidence for the class at all.
    maps = [read_cam(f)["cams"] for f in files]
    peaks = np.concatenate([m.reshape(len(m), -1).max(axis=1).astype(np.float32) for m in maps])
    assert np.all(np.isclose(peaks, 1.0, atol=1e-3) | (peaks == 0))
    assert np.isclose(peaks, 1.0, atol=1e-3).any()

    for method in ("crf", "none"):
        out = own_run / f"refine-{method}"
        result = igcam("refine", "--run", own_run, "--out", out, "--method", method)
        assert result.returncode == 0, result.stderr
        png = Image.open(out / f"{files[0].stem}.png")
        assert png.mode == "P" and png.size == mask.shape[::-1]
        assert set(np.unique(np.array(png))) <= {0, *(c + 1 for c in expected)}

    gt = tiny_voc / "SegmentationClass"
    report_file = own_run / "eval" / "mask.json"
    result = igcam("eval", "--pred", own_run / "refine-crf", "--gt", gt,
                   "--classes", tiny_voc / "classes.txt", "--out", report_file)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())["report"]
    assert 0 <= report["miou"] <= 1 and report["images"] == 24 and "mIoU" in result.stderr
    result = igcam("eval", "--cams", own_run / "cam", "--gt", gt, "--classes",
                   tiny_voc / "classes.txt", "--thresholds", "0.1:0.3:0.1")
    assert result.returncode == 0, result.stderr
    assert "best background threshold" in result.stderr


def test_eval_counts_missing_predictions(tiny_voc: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(tiny_voc / "SegmentationClass", pred)
    split = tiny_voc / "ImageSets" / "Segmentation" / "train.txt"
    args = ("--gt", tiny_voc / "SegmentationClass", "--classes", tiny_voc / "classes.txt",
            "--split", split, "--ignore-uncertain", "--out")
    assert igcam("eval", "--pred", pred, *args, tmp_path / "a.json").returncode == 0
    assert json.loads((tmp_path / "a.json").read_text())["report"]["miou"] == 1.0
    (pred / "demo_0000.png").unlink()
    result = igcam("eval", "--pred", pred, *args, tmp_path / "b.json")
    report = json.loads((tmp_path / "b.json").read_text())["report"]
    assert report["missing_or_failed"] == 1 and report["miou"] < 1.0
    assert "count as all-wrong" in result.stderr


def test_cam_on_bare_folder_predicts_classes(trained_run: Path, tiny_voc: Path,
                                             tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("demo_0000.jpg", "demo_0001.jpg"):
        shutil.copy(tiny_voc / "JPEGImages" / name, folder / name)
    Image.open(folder / "demo_0000.jpg").convert("L").save(folder / "gray.png")
    result = igcam("cam", "--run", trained_run, "--images", folder, "--classes",
                   tiny_voc / "classes.txt", "--scales", "1.0", "--out", tmp_path / "cam",
                   "--score-threshold", "0.0")
    assert result.returncode == 0, result.stderr
    data = read_cam(tmp_path / "cam" / "gray.npz")
    assert data["classes"].tolist() == [0, 1, 2, 3, 4]  # every class above threshold 0
    assert data["scores"].shape == (5,)


def test_shards_split_the_work(trained_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "cam"
    for shard in ("0/2", "1/2"):
        result = igcam("cam", "--run", trained_run, "--voc", tiny_voc, "--scales", "1.0",
                       "--out", out, "--shard", shard)
        assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.npz"))) == 24
    for index in (0, 1):
        manifest = json.loads((out / f"manifest.shard-{index}-of-2.json").read_text())
        assert manifest["counts"]["processed"] == 12


def _start(*args: str | Path) -> subprocess.Popen:
    """``igcam ARGS`` as its own process, to be killed."""
    return subprocess.Popen(igcam_command(*args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **PROCESS_ENV})


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the step finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_killed_cam_resumes_to_the_same_result(trained_run: Path, tmp_path: Path) -> None:
    data = make_demo_dataset(tmp_path / "data", n_train=40, size=96, seed=5)
    args = ("--voc", data, "--scales", "1.0,2.0,3.0", "--device", "cpu")
    clean = tmp_path / "clean"
    assert igcam("cam", "--run", trained_run, *args, "--out", clean).returncode == 0

    out = tmp_path / "killed"
    _kill_when(_start("cam", "--run", trained_run, *args, "--out", out),
               lambda: len(list(out.glob("*.npz"))) >= 3)
    partial = sorted(out.glob("*.npz"))
    assert 3 <= len(partial) < 40
    for path in partial:  # atomic writes: whatever exists is complete
        read_cam(path)
    assert not (out / "manifest.json").exists()

    result = igcam("cam", "--run", trained_run, *args, "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped_done"] == len(partial)
    assert manifest["counts"]["processed"] == 40 - len(partial)
    assert not list(out.glob(".igcam-tmp-*"))
    for path in sorted(clean.glob("*.npz")):
        a, b = read_cam(path), read_cam(out / path.name)
        assert a["classes"].tolist() == b["classes"].tolist()
        assert np.allclose(a["cams"].astype(np.float32), b["cams"].astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("workers", [("--loader-workers", "0"), ()], ids=["0-workers", "defaults"])
@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(workers: tuple[str, ...], tiny_voc: Path,
                                                     tmp_path: Path) -> None:
    """With the default persistent loader workers too: every epoch's augmentations reach them."""
    args = ("--voc", tiny_voc, "--epochs", "4", "--crop", "64", "--batch-size", "8", *workers,
            "--device", "cpu")
    clean = tmp_path / "clean"
    assert igcam("train-cls", "--run", clean, *args).returncode == 0

    run = tmp_path / "killed"
    folder = run / "train-cls"
    _kill_when(_start("train-cls", "--run", run, *args),
               lambda: (folder / "epoch-001.pt").exists())
    assert not (folder / "classifier.pt").exists()
    result = igcam("train-cls", "--run", run, *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in result.stderr
    a = torch.load(clean / "train-cls" / "classifier.pt", weights_only=True)["model"]
    b = torch.load(folder / "classifier.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_does_not_depend_on_the_loader_workers(tiny_voc: Path, tmp_path: Path) -> None:
    """Before, persistent workers repeated epoch 0's augmentations in every epoch."""
    runs = []
    for workers in ("0", "2"):
        run = tmp_path / f"workers-{workers}"
        result = igcam("train-cls", "--run", run, "--voc", tiny_voc, "--epochs", "2", "--crop",
                       "64", "--batch-size", "8", "--loader-workers", workers, "--device", "cpu")
        assert result.returncode == 0, result.stderr
        runs.append(torch.load(run / "train-cls" / "classifier.pt", weights_only=True))
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    assert all(torch.equal(runs[0]["model"][k], runs[1]["model"][k]) for k in runs[0]["model"])


def test_outputs_made_with_other_options_are_refused_or_redone(trained_run: Path,
                                                               tiny_voc: Path,
                                                               tmp_path: Path) -> None:
    """Before, a re-run with other scales reported '0 written, 24 already done' and rewrote
    the manifest to claim the new options for files made with the old ones."""
    out = tmp_path / "cam"
    args = ("cam", "--run", trained_run, "--voc", tiny_voc, "--device", "cpu", "--out", out)
    assert igcam(*args, "--scales", "1.0,0.5").returncode == 0
    refused = igcam(*args, "--scales", "1.0", "--no-flip")
    assert refused.returncode == 2, refused.stderr
    assert "another flip, scales" in refused.stderr and "--overwrite" in refused.stderr
    assert json.loads((out / "manifest.json").read_text())["config"]["scales"] == [1.0, 0.5]
    redone = igcam(*args, "--scales", "1.0", "--no-flip", "--overwrite")
    assert redone.returncode == 0, redone.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["scales"] == [1.0] and manifest["config"]["flip"] is False
    assert manifest["counts"]["processed"] == 24
    again = igcam(*args, "--scales", "1.0", "--no-flip", "--strict")  # same outputs: resumes
    assert again.returncode == 0 and "24 already done" in again.stderr, again.stderr

    masks = ("refine", "--run", trained_run, "--cams", out, "--out", tmp_path / "masks",
             "--method", "none")
    assert igcam(*masks, "--threshold", "0.2").returncode == 0
    other = igcam(*masks, "--threshold", "0.3")
    assert other.returncode == 2 and "another threshold" in other.stderr, other.stderr


def test_finished_training_with_other_options_is_refused(own_run: Path, tiny_voc: Path) -> None:
    """Before, `--resume --epochs 3` on a finished 2-epoch run said 'exists, skipping'."""
    common = ("train-cls", "--run", own_run, "--voc", tiny_voc, "--crop", "64",
              "--batch-size", "8", "--device", "cpu", "--resume")
    refused = igcam(*common, "--epochs", "3")
    assert refused.returncode == 2 and "another epochs" in refused.stderr, refused.stderr
    same = igcam(*common, "--epochs", "2", "--loader-workers", "2")  # changes no weight
    assert same.returncode == 0 and "exists, skipping" in same.stderr, same.stderr


def test_images_over_max_side_are_processed_shrunk_with_maps_at_full_size(
        trained_run: Path, tmp_path: Path) -> None:
    """A 12000 x 12000 image was processed at full size: 7.5 GB, then an allocation failure.
    The same bound on small images: their maps come back at their own size, for the same
    classes, and refine makes masks of their size, also when its DenseCRF runs shrunk."""
    data = make_demo_dataset(tmp_path / "data", n_train=4, size=96, seed=11)
    runs = {}
    for side in ("0", "48"):
        out = tmp_path / f"cam-{side}"
        result = igcam("cam", "--run", trained_run, "--voc", data, "--scales", "1.0", "--device",
                       "cpu", "--max-side", side, "--out", out)
        assert result.returncode == 0, result.stderr
        runs[side] = [read_cam(p) for p in sorted(out.glob("*.npz"))]
    manifest = json.loads((tmp_path / "cam-48" / "manifest.json").read_text())
    assert manifest["counts"]["downscaled"] == 4 and "downscaled" not in json.loads(
        (tmp_path / "cam-0" / "manifest.json").read_text())["counts"]
    for full, shrunk in zip(runs["0"], runs["48"], strict=True):
        assert shrunk["cams"].shape == full["cams"].shape and full["cams"].shape[1:] == (96, 96)
        assert shrunk["classes"].tolist() == full["classes"].tolist()
    for side in ("2000", "48"):  # DenseCRF at full size, and on the images shrunk to 48 px
        masks = tmp_path / f"masks-{side}"
        result = igcam("refine", "--run", trained_run, "--cams", tmp_path / "cam-48", "--out",
                       masks, "--max-side", side)
        assert result.returncode == 0, result.stderr
        files = sorted(masks.glob("*.png"))
        assert len(files) == 4 and all(np.array(Image.open(p)).shape == (96, 96) for p in files)
