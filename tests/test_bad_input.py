"""Bad input gives one line naming the problem and exit status 2, never a traceback.

The commands run in this process (:func:`harness.igcam`); the first test runs the entry point
as its own process, as a shell does.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from harness import igcam, igcam_process, one_line_error

import igcam_cli.steps.status as status_step
from igcam_cli.artifacts import RunDir
from igcam_cli.training.stage1 import Stage1


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


def test_the_entry_point_as_a_process_exits_2_on_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(igcam_process("train-cls", "--run", tmp_path / "run", "--images",
                                 tmp_path / "empty"), "no images")
    one_line_error(igcam_process("cam", "--run", tmp_path, "--box-top", "3"), "--box-top",
                   "igcam cam --help")


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
    one_line_error(_train(tmp_path / "strict", photos, tiny_voc, "--strict"), "demo_0003.jpg")
    assert not (tmp_path / "strict" / "train-cls" / "classifier.pt").exists()


def test_unknown_class_in_labels_file(photos: Path, tiny_voc: Path, tmp_path: Path) -> None:
    (photos.parent / "labels.csv").write_text("demo_0000,disc\ndemo_0001,unicorn\n")
    one_line_error(_train(tmp_path / "run", photos, tiny_voc), "labels.csv line 2", "unicorn")


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(igcam("train-cls", "--run", tmp_path / "run", "--images",
                         tmp_path / "empty"), "no images")


def test_output_directory_not_writable(photos: Path, tiny_voc: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run directory should go")
    one_line_error(_train(blocker / "run", photos, tiny_voc), "not writable")


def test_missing_split_file_and_missing_cams(tiny_voc: Path, tmp_path: Path) -> None:
    one_line_error(igcam("train-cls", "--run", tmp_path / "run", "--voc", tiny_voc, "--split",
                         "nope"), "nope.txt")
    one_line_error(igcam("refine", "--run", tmp_path / "run"), "no CAM files")
    one_line_error(igcam("cam", "--run", tmp_path / "run", "--voc", tiny_voc),
                   "classifier.pt")


def test_bad_option_values(tiny_voc: Path, tmp_path: Path) -> None:
    gt = tiny_voc / "SegmentationClass"
    one_line_error(igcam("eval", "--cams", gt, "--gt", gt, "--thresholds", "a:b"),
                   "--thresholds")
    one_line_error(igcam("cam", "--run", tmp_path, "--voc", tiny_voc, "--shard", "5/2"),
                   "--shard")
    one_line_error(igcam("train-cls", "--run", tmp_path, "--voc", tiny_voc, "--device",
                         "tpu"), "--device")


def test_parser_errors_are_one_line_too(tmp_path: Path) -> None:
    """Unknown options and values of the wrong type: the parser's message, on one line."""
    one_line_error(igcam("cam", "--run", tmp_path, "--box-top", "3"), "--box-top",
                   "igcam cam --help")
    one_line_error(igcam("propose", "--run", tmp_path, "--top", "many"), "--top")
    one_line_error(igcam("refine"), "--run")  # a required option
    one_line_error(igcam("train-cls", "--run", tmp_path, "--batch-size", "0"), "--batch-size")
    one_line_error(igcam("frobnicate"), "frobnicate")


def test_cuda_device_without_a_gpu_is_a_user_error(tiny_voc: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for device in ("cuda", "cuda:1"):
        one_line_error(igcam("train-cls", "--run", tmp_path, "--voc", tiny_voc, "--device",
                             device), f"--device {device}", "no CUDA device")


def _copy_voc(tiny_voc: Path, root: Path, split: str) -> Path:
    shutil.copytree(tiny_voc, root)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(split)
    return root


@pytest.mark.parametrize("bad_id", ["../../escape", "x/slash", "bell\x07"])
def test_ids_that_are_paths_are_refused(bad_id: str, tiny_voc: Path, trained_run: Path,
                                        tmp_path: Path) -> None:
    """A split naming ../../escape made cam read outside JPEGImages/ and write outside RUN/."""
    root = _copy_voc(tiny_voc, tmp_path / "voc", f"demo_0000\n{bad_id}\n")
    (tmp_path / "escape.jpg").write_bytes((tiny_voc / "JPEGImages" / "demo_0001.jpg").read_bytes())
    for step, run in (("train-cls", tmp_path / "run"), ("cam", trained_run),
                      ("propose", tmp_path / "run")):
        device = () if step == "propose" else ("--device", "cpu")
        one_line_error(igcam(step, "--run", run, "--voc", root, *device),
                       "train.txt line 2", "not an image id")
    assert not list(tmp_path.rglob("escape.npz")) and not list(trained_run.parent.glob("*.npz"))


def test_dataset_problems_are_shown_not_only_counted(tiny_voc: Path, trained_run: Path,
                                                     tmp_path: Path) -> None:
    root = _copy_voc(tiny_voc, tmp_path / "voc", "demo_0000\nnot_there\n")
    result = igcam("cam", "--run", trained_run, "--voc", root, "--scales", "1.0", "--device",
                   "cpu", "--out", tmp_path / "cams")
    assert result.returncode == 0, result.stderr
    assert "1 failed" in result.stderr and "not_there.jpg: file not found" in result.stderr


def test_huge_images_are_a_per_image_problem(photos: Path, tiny_voc: Path,
                                             tmp_path: Path) -> None:
    """A 20000 x 20000 PNG raised PIL's DecompressionBombError as a traceback."""
    from PIL import Image

    Image.new("1", (20000, 20000)).save(photos / "huge.png")
    with (photos.parent / "labels.csv").open("a") as labels:
        labels.write("huge,disc\n")
    result = _train(tmp_path / "run", photos, tiny_voc)
    assert result.returncode == 0, result.stderr
    assert "huge.png: image too large" in result.stderr and "Traceback" not in result.stderr
    one_line_error(_train(tmp_path / "strict", photos, tiny_voc, "--strict"), "huge.png")


def test_corrupt_and_inconsistent_cam_files(tmp_path: Path) -> None:
    """A 0-byte CAM printed only 'Aborted.'; random bytes a traceback; class 99 became mask 100."""
    import numpy as np

    from igcam_cli.artifacts import write_cam

    cams = tmp_path / "cams"
    cams.mkdir()
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    write_cam(cams / "good.npz", np.array([1]), np.ones((1, 16, 16)), np.full(3, 0.9), image)
    write_cam(cams / "class99.npz", np.array([99]), np.ones((1, 16, 16)), np.full(3, 0.9), image)
    (cams / "empty.npz").write_bytes(b"")
    (cams / "noise.npz").write_bytes(bytes(range(256)) * 8)
    result = igcam("refine", "--run", tmp_path / "run", "--cams", cams, "--method", "none")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "3 failed" in result.stderr, result.stderr
    masks = tmp_path / "run" / "refine-none"
    assert sorted(p.name for p in masks.glob("*.png")) == ["good.png"]
    assert "class ids [99]" in result.stderr
    one_line_error(igcam("refine", "--run", tmp_path / "strict", "--cams", cams, "--method",
                         "none", "--strict"), ".npz")


def test_corrupt_checkpoints_are_one_line_and_never_advise_unsafe_loading(
        tiny_voc: Path, tmp_path: Path) -> None:
    import pickle

    run = tmp_path / "run"
    folder = run / "train-cls"
    folder.mkdir(parents=True)
    (folder / "classifier.pt").write_bytes(pickle.dumps({"model": object()}))
    result = igcam("cam", "--run", run, "--voc", tiny_voc, "--device", "cpu")
    one_line_error(result, "classifier.pt", "never unpickles code")
    assert "weights_only=False" not in result.stderr
    (folder / "classifier.pt").unlink()
    (folder / "epoch-001.pt").write_bytes(b"truncated")
    one_line_error(_train_voc(run, tiny_voc, "--resume"), "epoch-001.pt", "corrupt or truncated")


def _train_voc(run: Path, tiny_voc: Path, *extra: str):
    return igcam("train-cls", "--run", run, "--voc", tiny_voc, "--epochs", "1", "--crop", "64",
                 "--batch-size", "8", "--loader-workers", "0", "--device", "cpu", *extra)


def test_checkpoints_and_prototypes_with_the_wrong_contents(trained_run: Path, tiny_voc: Path,
                                                            tmp_path: Path) -> None:
    """Loadable files whose contents are wrong: one line each, never a traceback."""
    import torch

    payload = torch.load(trained_run / "train-cls" / "classifier.pt", weights_only=True)
    run = tmp_path / "run"
    (run / "train-cls").mkdir(parents=True)
    payload["model"] = {k: v[:1] for k, v in payload["model"].items()}  # wrong shapes
    torch.save(payload, run / "train-cls" / "classifier.pt")
    one_line_error(igcam("cam", "--run", run, "--voc", tiny_voc, "--device", "cpu"),
                   "classifier.pt is damaged")

    other = tmp_path / "other"
    (other / "train-cls").mkdir(parents=True)
    torch.save({"model": {}}, other / "train-cls" / "epoch-001.pt")  # no optimizer, no epoch
    one_line_error(_train_voc(other, tiny_voc, "--resume"), "epoch-001.pt is damaged")

    from igcam_cli.artifacts import read_prototypes
    from igcam_cli.errors import IgcamError

    prototypes = tmp_path / "prototypes"
    prototypes.mkdir()
    torch.save({"class_prototypes": torch.zeros(3)}, prototypes / "prototypes.pt")
    with pytest.raises(IgcamError, match="prototypes .* are damaged"):
        read_prototypes(prototypes)


def test_labels_file_ids_that_are_paths_are_refused(photos: Path, tiny_voc: Path,
                                                    tmp_path: Path) -> None:
    with (photos.parent / "labels.csv").open("a") as labels:
        labels.write("../../escape.jpg,disc\n")
    one_line_error(_train(tmp_path / "run", photos, tiny_voc), "labels.csv line 9",
                   "not an image id")


@pytest.mark.parametrize(("args", "needle"), [
    (("refine", "--threshold", "nan"), "--threshold must be a finite number"),
    (("cam", "--scales", "1.0,nan"), "--scales must be a finite number"),
    (("cam", "--scales", "1.0,inf"), "--scales must be a finite number"),
    (("cam", "--scales", "1.0,0"), "--scales must be above 0"),
    (("train-cls", "--lr", "nan"), "--lr must be a finite number"),
    (("train-aff", "--lr", "inf"), "--lr must be a finite number"),
    (("influence", "--damping", "nan"), "--damping must be a finite number"),
    (("refine", "--crf-gt-prob", "nan"), "--crf-gt-prob must be a finite number"),
    (("run", "--lpcam-k", "0"), "--lpcam-k"),
    (("train-cls", "--crop", "50000"), "--crop"),
])
def test_numbers_that_are_not_numbers_stop_before_any_work(
        tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    """NaN passes every bound (each comparison is False), so it once trained a NaN model or
    wrote all-background masks with exit status 0."""
    run = tmp_path / "run"
    one_line_error(igcam(*args, "--run", run), needle)
    assert not run.exists()  # refused while parsing: nothing made


def test_a_sweep_too_long_to_hold_is_refused(tiny_voc: Path) -> None:
    gt = tiny_voc / "SegmentationClass"
    for sweep in ("0:1e12:1", "0:1:0", "nan:1:0.1", "0.1,inf"):
        one_line_error(igcam("eval", "--cams", gt, "--gt", gt, "--thresholds", sweep),
                       "--thresholds", "at most 1000 finite values")


def test_a_loss_that_is_no_longer_a_number_stops_training(
        photos: Path, tiny_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first epoch trains; the second's loss turns NaN (as a diverging --lr makes it):
    one line, and the first epoch's checkpoint stays for --resume."""
    calls = []
    real = Stage1.loss

    def diverging(self, *args):  # noqa: ANN001, ANN202 - the stage's own signature
        logits, loss = real(self, *args)
        calls.append(1)
        return logits, loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(Stage1, "loss", diverging)
    run = tmp_path / "run"
    result = _train(run, photos, tiny_voc, "--epochs", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the bar as far as it got
    assert last.startswith("error: train-cls: the loss became nan in epoch 2"), last
    assert "lower --lr" in last
    folder = RunDir(run).train_cls()
    assert not RunDir(run).classifier().exists()
    assert [p.name for p in RunDir.epochs(folder)] == ["epoch-001.pt"]


def test_a_refused_dataset_leaves_no_step_folder_behind(tmp_path: Path) -> None:
    run = tmp_path / "run"
    one_line_error(igcam("train-cls", "--run", run, "--voc", tmp_path / "nowhere"), "nowhere")
    assert not RunDir(run).train_cls().exists()


def test_an_unknown_method_lists_the_methods_plainly(tmp_path: Path) -> None:
    one_line_error(igcam("cam", "--run", tmp_path, "--method", "smoothgradcam"),
                   "--method must be cam or one of these", "lpcam", "got 'smoothgradcam'")


def test_images_left_without_a_class_are_counted_and_said(own_run: Path, tiny_voc: Path,
                                                          tmp_path: Path) -> None:
    """New photos without labels and a classifier unsure of them: empty CAM files and
    all-background masks, which used to pass as "3 written"."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        shutil.copy(tiny_voc / "JPEGImages" / f"demo_{index:04d}.jpg", photos)
    result = igcam("cam", "--run", own_run, "--images", photos, "--classes",
                   tiny_voc / "classes.txt", "--scales", "1.0", "--score-threshold", "1.0",
                   "--out", own_run / "cam-new")
    assert result.returncode == 0, result.stderr
    assert "warning: 3 of 3 images: no class scored --score-threshold 1.0" in result.stderr
    manifest = json.loads(RunDir.manifest(own_run / "cam-new").read_text())
    assert manifest["counts"]["no_class"] == 3
    assert any("masks will be all background" in w for w in manifest["warnings"])


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint carries
        return (print, ("code ran",))


def test_a_weights_file_with_code_in_it_is_one_sanitised_line(
        tiny_voc: Path, tmp_path: Path) -> None:
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _Evil()}, evil)
    result = igcam("train-cls", "--run", tmp_path / "run", "--voc", tiny_voc, "--backbone",
                   "resnet50", "--weights", evil, "--epochs", "1")
    one_line_error(result, "weights file", "holds more than tensors")
    assert "weights_only" not in result.stderr and "code ran" not in result.stdout


def test_a_full_disk_names_the_file_and_the_room_left(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk mid-step: the file it could not write, and how much room is left there."""
    target = tmp_path / "run" / "report.html"

    def full(config: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(status_step, "status", full)
    one_line_error(igcam("status", "--run", tmp_path), f"{target}: No space left on device (",
                   "MB free of")
