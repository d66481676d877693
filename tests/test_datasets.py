import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcam_cli.datasets import DatasetSpec, labels_from_mask, load_dataset, read_labels_file
from igcam_cli.errors import IgcamError, ImageProblem

NAMES = ("cat", "dog", "person")


def test_voc_layout_labels_come_from_masks(tiny_voc: Path) -> None:
    dataset = load_dataset(DatasetSpec(voc=tiny_voc))
    assert dataset.class_names == ("disc", "square", "triangle", "star", "ring")
    assert len(dataset.samples) == 24 and not dataset.problems
    sample = dataset.samples[0]
    mask = np.array(Image.open(sample.mask))
    assert sample.labels == tuple(sorted(int(v) - 1 for v in set(mask.flat) - {0, 255}))


def test_labels_from_mask_ignores_background_and_255() -> None:
    assert labels_from_mask(np.array([[0, 255, 3], [3, 15, 0]]), 20) == (2, 14)


def test_voc_without_masks_reads_annotation_xml(tmp_path: Path, tiny_voc: Path) -> None:
    root = tmp_path / "voc"
    shutil.copytree(tiny_voc / "JPEGImages", root / "JPEGImages")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("demo_0000\n")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "demo_0000.xml").write_text(
        "<annotation><object><name>dog</name></object><object><name>cat</name></object>"
        "<object><name>dog</name></object></annotation>")
    (root / "classes.txt").write_text("\n".join(NAMES))
    dataset = load_dataset(DatasetSpec(voc=root))
    assert dataset.samples[0].labels == (0, 1) and dataset.samples[0].mask is None


def _voc_copy(tiny_voc: Path, tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    shutil.copytree(tiny_voc, root)
    return root


def test_split_naming_missing_image_is_counted_or_fatal_with_strict(
        tmp_path: Path, tiny_voc: Path) -> None:
    root = _voc_copy(tiny_voc, tmp_path)
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "no_such_image\n")
    dataset = load_dataset(DatasetSpec(voc=root))
    assert len(dataset.samples) == 24
    assert len(dataset.problems) == 1 and "no_such_image.jpg" in dataset.problems[0]
    with pytest.raises(ImageProblem, match="no_such_image"):
        load_dataset(DatasetSpec(voc=root), strict=True)


def test_mask_with_wrong_size_is_reported(tmp_path: Path, tiny_voc: Path) -> None:
    root = _voc_copy(tiny_voc, tmp_path)
    mask = root / "SegmentationClass" / "demo_0001.png"
    Image.open(mask).resize((32, 40)).save(mask)
    dataset = load_dataset(DatasetSpec(voc=root))
    assert [s.id for s in dataset.samples].count("demo_0001") == 0
    assert "demo_0001.png" in dataset.problems[0] and "differs" in dataset.problems[0]


def test_labels_csv_and_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("image_id,labels\na.jpg,dog;Cat\nb,person\nc,\n")
    assert read_labels_file(csv_file, NAMES) == {"a": (0, 1), "b": (2,), "c": ()}
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps({"a": ["dog"], "b": "cat;person"}))
    assert read_labels_file(json_file, NAMES) == {"a": (1,), "b": (0, 2)}


def test_unknown_class_name_names_file_and_line(tmp_path: Path) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("a,dog\nb,unicorn\n")
    with pytest.raises(IgcamError, match=r"labels.csv line 2: unknown class name 'unicorn'"):
        read_labels_file(csv_file, NAMES)


def test_folder_dataset_and_empty_folder(tmp_path: Path, tiny_voc: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(tiny_voc / "JPEGImages", folder)
    labels = tmp_path / "labels.csv"
    labels.write_text("demo_0000,dog\nghost,cat\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES))
    dataset = load_dataset(DatasetSpec(images=folder, labels=labels, classes=classes))
    assert len(dataset.samples) == 24 and len(dataset.labelled()) == 1
    assert "ghost" in dataset.problems[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IgcamError, match="contains no images"):
        load_dataset(DatasetSpec(images=empty))


def test_real_voc_and_coco_layouts(voc_sample: Path, coco128: Path) -> None:
    voc = load_dataset(DatasetSpec(voc=voc_sample, split="train"))
    assert {s.id: s.labels for s in voc.samples}["2011_000003"] == (4, 14)  # bottle, person
    coco = load_dataset(DatasetSpec(voc=coco128, split="train"))
    assert len(coco.samples) == 97 and all(s.labels for s in coco.samples)
