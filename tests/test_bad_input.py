"""Bad input gives one line naming the problem and exit status 2, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import igcam


def _one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def photos(tiny_voc: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(8):
        name = f"demo_{index:04d}.jpg"
        shutil.copy(tiny_voc / "JPEGImages" / name, folder / name)
    (tmp_path / "labels.csv").write_text(
        "".join(f"demo_{i:04d},{['disc', 'square'][i % 2]}\n" for i in range(8)))
    return folder


def _train(run: Path, photos: Path, tiny_voc: Path, *extra: str):
    return igcam("train-cls", "--run", run, "--images", photos, "--labels",
                 photos.parent / "labels.csv", "--classes", tiny_voc / "classes.txt",
                 "--epochs", "1", "--crop", "64", "--batch-size", "4", "--loader-workers", "0",
                 *extra)


def test_corrupt_image_is_warned_counted_or_fatal_with_strict(
        photos: Path, tiny_voc: Path, tmp_path: Path) -> None:
    (photos / "demo_0003.jpg").write_bytes(b"\xff\xd8 truncated")
    result = _train(tmp_path / "run", photos, tiny_voc)
    assert result.returncode == 0, result.stderr
    assert "demo_0003.jpg" in result.stderr and "warning" in result.stderr
    manifest = json.loads((tmp_path / "run" / "train-cls" / "manifest.json").read_text())
    assert manifest["counts"]["failed"] == 1 and manifest["counts"]["images"] == 7
    _one_line_error(_train(tmp_path / "strict", photos, tiny_voc, "--strict"), "demo_0003.jpg")
    assert not (tmp_path / "strict" / "train-cls" / "classifier.pt").exists()


def test_unknown_class_in_labels_file(photos: Path, tiny_voc: Path, tmp_path: Path) -> None:
    (photos.parent / "labels.csv").write_text("demo_0000,disc\ndemo_0001,unicorn\n")
    _one_line_error(_train(tmp_path / "run", photos, tiny_voc), "labels.csv line 2", "unicorn")


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_error(igcam("train-cls", "--run", tmp_path / "run", "--images",
                          tmp_path / "empty"), "no images")


def test_output_directory_not_writable(photos: Path, tiny_voc: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run directory should go")
    _one_line_error(_train(blocker / "run", photos, tiny_voc), "not writable")


def test_missing_split_file_and_missing_cams(tiny_voc: Path, tmp_path: Path) -> None:
    _one_line_error(igcam("train-cls", "--run", tmp_path / "run", "--voc", tiny_voc, "--split",
                          "nope"), "nope.txt")
    _one_line_error(igcam("refine", "--run", tmp_path / "run"), "no CAM files")
    _one_line_error(igcam("cam", "--run", tmp_path / "run", "--voc", tiny_voc),
                    "classifier.pt")


def test_bad_option_values(tiny_voc: Path, tmp_path: Path) -> None:
    gt = tiny_voc / "SegmentationClass"
    _one_line_error(igcam("eval", "--cams", gt, "--gt", gt, "--thresholds", "a:b"),
                    "--thresholds")
    _one_line_error(igcam("cam", "--run", tmp_path, "--voc", tiny_voc, "--shard", "5/2"),
                    "--shard")
    _one_line_error(igcam("train-cls", "--run", tmp_path, "--voc", tiny_voc, "--device",
                          "tpu"), "--device")


def test_parser_errors_are_one_line_too(tmp_path: Path) -> None:
    """Unknown options and values of the wrong type: the parser's message, on one line."""
    _one_line_error(igcam("cam", "--run", tmp_path, "--box-top", "3"), "--box-top",
                    "igcam cam --help")
    _one_line_error(igcam("propose", "--run", tmp_path, "--top", "many"), "--top")
    _one_line_error(igcam("refine"), "--run")  # a required option
    _one_line_error(igcam("train-cls", "--run", tmp_path, "--batch-size", "0"), "--batch-size")
    _one_line_error(igcam("frobnicate"), "frobnicate")


def test_cuda_device_without_a_gpu_is_a_user_error(tiny_voc: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for device in ("cuda", "cuda:1"):
        _one_line_error(igcam("train-cls", "--run", tmp_path, "--voc", tiny_voc, "--device",
                              device), f"--device {device}", "no CUDA device")
