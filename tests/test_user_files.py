"""Files as users make them (Excel, Notepad, labelling tools, Windows shares), read right or
refused with one line naming the line: never a traceback, never a silently wrong label."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from harness import TRAIN, igcam, ok, one_line_error

from igcam_cli.datasets import DatasetSpec, load_dataset
from igcam_cli.errors import IgcamError

CLASSES = "disc\nsquare\ntriangle\n"


@pytest.fixture()
def folder(tiny_voc: Path, tmp_path: Path) -> Path:
    """Four photos and a class list, as a user's own folder."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(4):
        shutil.copy(tiny_voc / "JPEGImages" / f"demo_{index:04d}.jpg", photos / f"p{index}.jpg")
    (tmp_path / "classes.txt").write_text(CLASSES)
    return photos


def _labels(folder: Path, name: str, data: bytes) -> dict[str, tuple[int, ...] | None]:
    labels = folder.parent / name
    labels.write_bytes(data)
    dataset = load_dataset(DatasetSpec(images=folder, labels=labels,
                                       classes=folder.parent / "classes.txt"))
    return {s.id: s.labels for s in dataset.samples}


@pytest.mark.parametrize("header", [b"image_id,labels\r\n", b""])
def test_an_excel_csv_with_a_byte_order_mark_keeps_every_row(folder: Path, header: bytes
                                                            ) -> None:
    rows = b"p0,disc\r\np1,square;triangle\r\np2,triangle\r\np3,disc\r\n"
    labels = _labels(folder, "labels.csv", b"\xef\xbb\xbf" + header + rows)
    assert labels == {"p0": (0,), "p1": (1, 2), "p2": (2,), "p3": (0,)}


def test_latin1_files_are_one_line_naming_the_line(folder: Path) -> None:
    classes = folder.parent / "latin1.txt"
    classes.write_bytes("disc\nsquare\ncaf\xe9\n".encode("latin-1"))
    one_line_error(igcam("train-cls", "--run", folder.parent / "run", "--images", folder,
                         "--classes", classes), "latin1.txt line 3 is not UTF-8", "0xe9")
    with pytest.raises(IgcamError, match="labels.csv line 2 is not UTF-8"):
        _labels(folder, "labels.csv", "p0,disc\np1,caf\xe9\n".encode("latin-1"))


def test_class_names_that_differ_only_in_case_are_refused(folder: Path) -> None:
    (folder.parent / "classes.txt").write_text("Dog\ncat\ndog\n")
    one_line_error(igcam("train-cls", "--run", folder.parent / "run", "--images", folder,
                         "--classes", folder.parent / "classes.txt"),
                   "line 3 ('dog') repeats line 1's class")


def test_an_image_labelled_twice_differently_is_refused(folder: Path) -> None:
    same = _labels(folder, "same.csv", b"p0,disc\np1,square\np0,disc\n")
    assert same["p0"] == (0,)  # a line repeated as it was is harmless
    with pytest.raises(IgcamError, match=r"line 3: 'p0' is labelled again, differently from "
                                         r"line 1"):
        _labels(folder, "twice.csv", b"p0,disc\np1,square\np0,triangle\n")
    with pytest.raises(IgcamError, match="'p0' is labelled twice"):
        _labels(folder, "twice.json", b'{"p0": ["disc"], "p1": ["square"], "p0": ["triangle"]}')
    assert _labels(folder, "ok.json", json.dumps({"p0": ["disc"]}).encode())["p0"] == (0,)


def test_a_file_name_that_is_not_utf8_trains_and_gets_its_cams(folder: Path) -> None:
    """A photo copied from an old Windows share: its name's bytes are Latin-1."""
    os.rename(folder / "p3.jpg", os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))
    labels = folder.parent / "labels.csv"
    labels.write_bytes(b"p0,disc\np1,square\np2,triangle\n")
    run = folder.parent / "run"
    ok(igcam("train-cls", "--run", run, "--images", folder, "--labels", labels,
             "--classes", folder.parent / "classes.txt", *TRAIN))
    ok(igcam("cam", "--run", run, "--images", folder, "--classes",
             folder.parent / "classes.txt", "--scales", "1.0"))
    assert len(list((run / "cam").glob("*.npz"))) == 4
