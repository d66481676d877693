"""``igcam eval`` with its ground truth, split and class list taken from the dataset's format."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from harness import igcam, ok, one_line_error
from PIL import Image

from igcam_cli.artifacts import StepRecord, write_cam
from igcam_cli.datasets import DatasetSpec, load_dataset
from igcam_cli.errors import IgcamError
from igcam_cli.report.plots import per_class
from igcam_cli.steps.eval import EvalConfig, EvalData, evaluate

THRESHOLDS = "0.2,0.4,0.6"


@pytest.fixture(scope="module")
def noisy_cams(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CAM files made from the masks plus noise (so mIoU is neither 0 nor 1), one image left out
    so that the split, not the folder, decides what is scored."""
    folder = tmp_path_factory.mktemp("cams")
    rng = np.random.default_rng(0)
    for sample in load_dataset(DatasetSpec(voc=tiny_voc)).samples[1:]:
        mask = np.array(Image.open(sample.mask))
        classes = np.array(sample.labels, dtype=np.int64)
        cams = np.stack([(mask == c + 1) * 0.6 + rng.random(mask.shape) * 0.5 for c in classes])
        cams /= cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
        write_cam(folder / f"{sample.id}.npz", classes, cams, np.zeros(5), sample.image)
    return folder


def _explicit(tiny_voc: Path, cams: Path, gt: Path | None = None) -> EvalConfig:
    """The ground truth, split and class list spelt out as files, as before datasets."""
    return EvalConfig(
        gt=gt or tiny_voc / "SegmentationClass", cams=cams, thresholds=THRESHOLDS,
        dataset=EvalData(split=str(tiny_voc / "ImageSets" / "Segmentation" / "train.txt"),
                         classes=tiny_voc / "classes.txt"))


def test_dataset_gives_the_same_scores_as_explicit_files(tiny_voc: Path, noisy_cams: Path
                                                         ) -> None:
    explicit = evaluate(_explicit(tiny_voc, noisy_cams))
    from_dataset = evaluate(EvalConfig(cams=noisy_cams, thresholds=THRESHOLDS,
                                       dataset=EvalData(voc=tiny_voc)))
    assert 0 < explicit["miou"] < 1
    assert explicit["images"] == 24 and explicit["missing_or_failed"] == 1
    assert from_dataset == explicit
    assert list(from_dataset["iou"])[1] == "disc"  # the class list came from ROOT/classes.txt


def test_cli_voc_root_matches_gt_and_split_files(tiny_voc: Path, noisy_cams: Path,
                                                 tmp_path: Path) -> None:
    split = tiny_voc / "ImageSets" / "Segmentation" / "train.txt"
    runs = {
        "files": ("--gt", tiny_voc / "SegmentationClass", "--split", split,
                  "--classes", tiny_voc / "classes.txt"),
        "dataset": ("--voc", tiny_voc),
    }
    reports = {}
    for name, args in runs.items():
        out = tmp_path / f"{name}.json"
        result = igcam("eval", "--cams", noisy_cams, "--thresholds", THRESHOLDS, *args,
                       "--out", out)
        assert result.returncode == 0, result.stderr
        manifest = json.loads(out.read_text())
        assert manifest["inputs"]["gt"] == str(tiny_voc / "SegmentationClass")
        reports[name] = manifest["report"]
    assert reports["dataset"]["miou"] == reports["files"]["miou"]
    assert reports["dataset"] == reports["files"]


def test_gt_alone_still_scores_every_prediction(tiny_voc: Path, noisy_cams: Path) -> None:
    report = evaluate(EvalConfig(gt=tiny_voc / "SegmentationClass", cams=noisy_cams,
                                 thresholds=THRESHOLDS,
                                 dataset=EvalData(classes=tiny_voc / "classes.txt")))
    assert report["images"] == 23 and report["missing_or_failed"] == 0


def test_dataset_split_falls_back_to_imagesets_main(tiny_voc: Path, noisy_cams: Path,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "voc"
    shutil.copytree(tiny_voc, root)
    main = root / "ImageSets" / "Main"
    main.mkdir()
    (root / "ImageSets" / "Segmentation" / "train.txt").rename(main / "train.txt")
    (main / "val.txt").write_text("demo_0000\ndemo_0001\n")
    report = evaluate(EvalConfig(cams=noisy_cams, thresholds=THRESHOLDS,
                                 dataset=EvalData(voc=root, split="val")))
    assert report["images"] == 2 and report["missing_or_failed"] == 1  # demo_0000 has no CAM
    assert evaluate(EvalConfig(cams=noisy_cams, thresholds=THRESHOLDS,
                               dataset=EvalData(voc=root)))["images"] == 24


def test_gt_option_overrides_the_dataset_ground_truth(tiny_voc: Path, noisy_cams: Path,
                                                      tmp_path: Path) -> None:
    gt = tmp_path / "gt"
    shutil.copytree(tiny_voc / "SegmentationClass", gt)
    blank = gt / "demo_0001.png"
    Image.fromarray(np.zeros_like(np.array(Image.open(blank)))).save(blank)
    overridden = evaluate(EvalConfig(gt=gt, cams=noisy_cams, thresholds=THRESHOLDS,
                                     dataset=EvalData(voc=tiny_voc)))
    assert overridden == evaluate(_explicit(tiny_voc, noisy_cams, gt=gt))
    assert overridden["miou"] != evaluate(_explicit(tiny_voc, noisy_cams))["miou"]


def test_no_ground_truth_is_a_one_line_error(tiny_voc: Path, noisy_cams: Path,
                                             tmp_path: Path) -> None:
    with pytest.raises(IgcamError, match="no ground truth: give --gt DIR"):
        evaluate(EvalConfig(cams=noisy_cams))
    with pytest.raises(IgcamError, match="no ground truth"):  # a folder has no masks
        evaluate(EvalConfig(cams=noisy_cams,
                            dataset=EvalData(images=tiny_voc / "JPEGImages")))
    result = igcam("eval", "--cams", noisy_cams)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no ground truth"), result.stderr


def test_eval_data_defaults_the_split_name_only_for_a_dataset() -> None:
    assert EvalData().split is None
    assert EvalData(voc=Path("root")).spec() == DatasetSpec(voc=Path("root"))
    assert EvalData(voc=Path("root"), split="val").spec().split == "val"
    spec = DatasetSpec(voc=Path("root"), split="val", classes=Path("c.txt"))
    assert EvalData.of(spec).spec() == spec


@pytest.mark.slow
def test_run_evaluates_through_the_dataset_format(tiny_voc: Path, tmp_path: Path) -> None:
    """``igcam run`` scores the split it trained on, even one only under ImageSets/Main."""
    root = tmp_path / "voc"
    shutil.copytree(tiny_voc, root)
    main = root / "ImageSets" / "Main"
    main.mkdir()
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:12]
    (main / "half.txt").write_text("\n".join(ids) + "\n")
    run = tmp_path / "run"
    result = igcam("run", "--run", run, "--voc", root, "--split", "half", "--epochs", "1",
                   "--crop", "64", "--batch-size", "8", "--scales", "1.0", "--refine", "none",
                   "--device", "cpu", "--vis", "2")
    assert result.returncode == 0, result.stderr
    for name in ("seed", "mask"):
        manifest = json.loads((run / "eval" / f"{name}.json").read_text())
        assert manifest["inputs"]["gt"] == str(root / "SegmentationClass")
        assert manifest["report"]["images"] == 12 and manifest["report"]["missing_or_failed"] == 0
    assert len(list((run / "vis").glob("*.jpg"))) == 2


def test_out_dash_writes_the_report_to_stdout_and_no_file(tiny_voc: Path, noisy_cams: Path,
                                                          tmp_path: Path) -> None:
    result = igcam("eval", "--cams", noisy_cams, "--voc", tiny_voc, "--thresholds", THRESHOLDS,
                   "--out", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)  # stdout holds the JSON alone; the table is on stderr
    assert printed["step"] == "eval" and 0 < printed["report"]["miou"] < 1
    assert "mIoU" in result.stderr and not (tmp_path / "-").exists()


def test_csv_and_table_formats_hold_the_json_scores(tiny_voc: Path, noisy_cams: Path,
                                                   tmp_path: Path) -> None:
    base = ("eval", "--cams", noisy_cams, "--voc", tiny_voc, "--thresholds", THRESHOLDS)
    report = json.loads(ok(igcam(*base, "--out", "-")).stdout)["report"]
    rows = list(csv.reader(io.StringIO(ok(igcam(*base, "--out", "-", "--format", "csv")).stdout)))
    assert rows[0] == ["class", "iou", "precision", "recall"] and rows[-1][0] == "mIoU"
    assert float(rows[-1][1]) == pytest.approx(report["miou"], abs=1e-6)
    for name, iou, precision, recall in rows[1:-1]:
        assert float(iou) == pytest.approx(report["iou"][name], abs=1e-6)
        assert float(precision) == pytest.approx(report["precision"][name], abs=1e-6)
        assert float(recall) == pytest.approx(report["recall"][name], abs=1e-6)
    ok(igcam(*base, "--out", tmp_path / "scores.txt", "--format", "table"))
    text = (tmp_path / "scores.txt").read_text()
    assert f"{100 * report['miou']:.1f}" in text.splitlines()[-2] and "\x1b" not in text
    one_line_error(igcam(*base, "--format", "xml"), "xml")


def test_out_onto_a_link_or_special_file_is_refused_and_left_alone(
        tiny_voc: Path, noisy_cams: Path, tmp_path: Path) -> None:
    """A rename onto ``/dev/stdout`` once replaced the system's link with a plain file."""
    link = tmp_path / "stdout"
    link.symlink_to("/dev/null")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (link, fifo):
        one_line_error(igcam("eval", "--cams", noisy_cams, "--voc", tiny_voc, "--thresholds",
                             THRESHOLDS, "--out", target), str(target), "not a regular file")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "stdout"]  # no temp left


def test_class_names_and_paths_print_as_they_are(tiny_voc: Path, noisy_cams: Path,
                                                 tmp_path: Path) -> None:
    """Brackets and dollars are the user's text, not console markup or TeX."""
    classes = tmp_path / "classes.txt"
    names = (tiny_voc / "classes.txt").read_text().splitlines()
    names[1] = "price $^$ [red]disc[/]"
    classes.write_text("\n".join(names) + "\n")
    result = igcam("eval", "--cams", noisy_cams, "--voc", tiny_voc, "--classes", classes,
                   "--thresholds", THRESHOLDS)
    assert result.returncode == 0, result.stderr
    assert "price $^$ [red]disc[/]" in result.stderr
    svg = per_class({names[1]: 0.5, "b": 0.2}, {}, {}).decode()
    assert "price $^$ [red]disc[/]" in svg.replace("&lt;", "<").replace("&gt;", ">")
    missing = tmp_path / "a[/]b[red]"
    one_line_error(igcam("eval", "--cams", missing, "--voc", tiny_voc), str(missing))


def test_cams_of_another_class_list_are_refused(tiny_voc: Path, noisy_cams: Path,
                                                tmp_path: Path) -> None:
    """CAMs of a 3-class classifier scored against 5 classes: ids 0-2 would mean other
    classes, and the scores would look plausible."""
    cams = tmp_path / "cams"
    shutil.copytree(noisy_cams, cams)
    record = StepRecord("cam", {})
    record.inputs = {"class_names": ["cat", "dog", "person"]}
    record.save(cams)
    one_line_error(igcam("eval", "--cams", cams, "--voc", tiny_voc), "CAMs of 3 classes",
                   "the ground truth has 5")
    record.inputs = {"class_names": (tiny_voc / "classes.txt").read_text().split()}
    record.save(cams)
    assert igcam("eval", "--cams", cams, "--voc", tiny_voc).returncode == 0
