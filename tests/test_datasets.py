import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcam_cli.datasets import (
    FORMATS,
    DatasetSpec,
    MaskFolder,
    class_file,
    class_names,
    dataset_format,
    labels_from_mask,
    load_dataset,
    read_labels_file,
)
from igcam_cli.datasets.voc import split_file
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


# The format registry: each format claims its own spec, and steps ask it for ground truth,
# splits and the class list instead of looking inside the dataset folder.


def test_each_format_detects_its_spec_and_not_the_others(tiny_voc: Path) -> None:
    specs = {"voc": DatasetSpec(voc=tiny_voc), "folder": DatasetSpec(images=tiny_voc),
             "coco": DatasetSpec(coco=tiny_voc / "instances_train.json")}
    assert set(FORMATS) == set(specs)
    for name, fmt in FORMATS.items():
        assert fmt.name == name
        for spec_name, spec in specs.items():
            assert fmt.detect(spec) == (spec_name == name), (name, spec_name)
        assert dataset_format(specs[name]) is fmt
    assert dataset_format(DatasetSpec()) is None


def test_no_or_two_formats_is_the_same_one_line_error(tiny_voc: Path) -> None:
    message = "give exactly one of --voc ROOT or --images DIR"
    with pytest.raises(IgcamError, match=message):
        load_dataset(DatasetSpec())
    with pytest.raises(IgcamError, match=message):
        load_dataset(DatasetSpec(voc=tiny_voc, images=tiny_voc / "JPEGImages"))
    with pytest.raises(IgcamError, match=message):
        dataset_format(DatasetSpec(voc=tiny_voc, images=tiny_voc / "JPEGImages"))


def test_voc_split_falls_back_to_imagesets_main(tmp_path: Path, tiny_voc: Path) -> None:
    root = _voc_copy(tiny_voc, tmp_path)
    segmentation = root / "ImageSets" / "Segmentation" / "train.txt"
    main = root / "ImageSets" / "Main" / "train.txt"
    main.parent.mkdir()
    main.write_text("demo_0003\ndemo_0005 1\n")
    assert split_file(root, "train") == segmentation  # Segmentation wins when it has the split
    segmentation.unlink()
    assert split_file(root, "train") == main
    spec = DatasetSpec(voc=root)
    assert FORMATS["voc"].split_ids(spec) == ["demo_0003", "demo_0005"]
    assert [s.id for s in load_dataset(spec).samples] == ["demo_0003", "demo_0005"]
    with pytest.raises(IgcamError, match=r"Segmentation/val.txt not found"):
        FORMATS["voc"].split_ids(DatasetSpec(voc=root, split="val"))


def test_voc_ground_truth_prefers_segmentation_class_aug(tmp_path: Path, tiny_voc: Path) -> None:
    root = _voc_copy(tiny_voc, tmp_path)
    voc, spec = FORMATS["voc"], DatasetSpec(voc=root)
    assert voc.ground_truth(spec) == MaskFolder(root / "SegmentationClass")
    shutil.copytree(root / "SegmentationClass", root / "SegmentationClassAug")
    assert voc.ground_truth(spec) == MaskFolder(root / "SegmentationClassAug")
    assert {s.mask.parent for s in load_dataset(spec).samples} == {root / "SegmentationClassAug"}
    shutil.rmtree(root / "SegmentationClassAug")
    shutil.rmtree(root / "SegmentationClass")
    assert voc.ground_truth(spec) is None


def test_class_file_comes_from_the_option_else_the_format(tmp_path: Path, tiny_voc: Path) -> None:
    other = tmp_path / "other.txt"
    other.write_text("\n".join(NAMES))
    assert class_file(DatasetSpec(voc=tiny_voc)) == tiny_voc / "classes.txt"
    assert class_file(DatasetSpec(voc=tiny_voc, classes=other)) == other
    assert class_names(DatasetSpec(voc=tiny_voc, classes=other)) == NAMES
    assert class_file(DatasetSpec(images=tiny_voc / "JPEGImages")) is None
    assert len(class_names(DatasetSpec(images=tiny_voc / "JPEGImages"))) == 20  # VOC's
    assert class_names(DatasetSpec(classes=other)) == NAMES  # no dataset: eval's --classes


def test_folder_format_has_no_ground_truth_or_splits(tiny_voc: Path) -> None:
    spec = DatasetSpec(images=tiny_voc / "JPEGImages")
    folder = FORMATS["folder"]
    assert folder.ground_truth(spec) is None and folder.split_ids(spec) is None
    assert folder.class_file(spec) is None
