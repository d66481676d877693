"""The COCO format on a tiny instances file built here: labels, class lists, ground truth drawn
from polygons, RLE and crowd regions, eval against it and ``igcam run --coco`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from harness import igcam, one_line_error
from PIL import Image
from pycocotools import mask as coco_mask

from igcam_cli.datasets import VOC_CLASSES, DatasetSpec, class_names, dataset_format, load_dataset
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_label_map, save_label_map
from igcam_cli.runner import recipe_differences

SIDE = 64
# Non-contiguous ids as in real COCO; giraffe is no VOC class, airplane is VOC's aeroplane.
CATEGORIES = [(1, "person"), (3, "car"), (5, "airplane"), (18, "dog"), (25, "giraffe")]
COCO_NAMES = tuple(name for _, name in CATEGORIES)
COLOURS = {1: (220, 40, 40), 3: (40, 200, 40), 5: (40, 40, 220), 18: (230, 200, 30),
           25: (200, 60, 200)}


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The pixels a rectangle polygon with corners (x0, y0), (x1, y1) covers."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd form: run lengths over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0, *runs] if flat[0] else runs}


DISK = (np.hypot(*np.mgrid[:SIDE, :SIDE] - np.array([[[44]], [[44]]])) < 10).astype(np.uint8)
# image number -> [(category id, iscrowd, segmentation, pixels)]
ANNOTATIONS = {
    1: [(18, 0, _rle(_rect(20, 20, 30, 30)), _rect(20, 20, 30, 30)),  # small dog on top
        (1, 0, _polygon(4, 4, 48, 48), _rect(4, 4, 48, 48))],  # of the large person
    2: [(1, 1, _uncompressed_rle(_rect(0, 0, 40, 64)), _rect(0, 0, 40, 64)),  # a crowd
        (3, 0, _polygon(30, 10, 60, 30), _rect(30, 10, 60, 30))],  # a car over the crowd
    7: [(25, 0, _polygon(2, 2, 30, 60), _rect(2, 2, 30, 60)),
        (5, 0, _rle(DISK), DISK)],
    9: [],  # no annotation: an all-background image
    10: [(3, 0, _polygon(8, 30, 56, 60), _rect(8, 30, 56, 60))],
    11: [(18, 0, _polygon(10, 10, 50, 50), _rect(10, 10, 50, 50))],
    12: [(1, 0, _rle(_rect(16, 0, 48, 64)), _rect(16, 0, 48, 64))],
    13: [(3, 0, _polygon(0, 0, 64, 24), _rect(0, 0, 64, 24)),
         (18, 0, _polygon(20, 30, 44, 60), _rect(20, 30, 44, 60))],
}


def _name(number: int) -> str:
    return f"COCO_train2014_{number:012d}"


def _expected(number: int, classes: dict[int, int]) -> np.ndarray:
    """The label map drawn by hand: crowds 255, then instances largest first."""
    labels = np.zeros((SIDE, SIDE), np.uint8)
    instances = [a for a in ANNOTATIONS[number] if a[0] in classes]
    for _, crowd, _, pixels in instances:
        if crowd:
            labels[pixels > 0] = 255
    for cid, crowd, _, pixels in sorted(instances, key=lambda a: -int(a[3].sum())):
        if not crowd:
            labels[pixels > 0] = classes[cid] + 1
    return labels


COCO_IDS = {cid: index for index, (cid, _) in enumerate(CATEGORIES)}
VOC_IDS = {1: VOC_CLASSES.index("person"), 3: VOC_CLASSES.index("car"),
           5: VOC_CLASSES.index("aeroplane"), 18: VOC_CLASSES.index("dog")}


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``annotations/instances_train2014.json`` with its images in ``train2014/`` beside."""
    root = tmp_path_factory.mktemp("coco")
    images = root / "train2014"
    images.mkdir()
    rng = np.random.default_rng(0)
    entries, annotations = [], []
    for number, items in ANNOTATIONS.items():
        picture = rng.integers(90, 140, (SIDE, SIDE, 3)).astype(np.uint8)
        for cid, _, _, pixels in sorted(items, key=lambda a: -int(a[3].sum())):
            picture[pixels > 0] = COLOURS[cid]
        Image.fromarray(picture).save(images / f"{_name(number)}.jpg", quality=95)
        entries.append({"id": number, "file_name": f"{_name(number)}.jpg", "height": SIDE,
                        "width": SIDE})
        for cid, crowd, segmentation, pixels in items:
            annotations.append({"id": 100 + len(annotations), "image_id": number,
                                "category_id": cid, "iscrowd": crowd,
                                "segmentation": segmentation, "area": float(pixels.sum()),
                                "bbox": [0, 0, 1, 1]})
    data = {"images": entries, "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": "x"}
                           for cid, name in reversed(CATEGORIES)]}  # listed out of id order
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances_train2014.json"
    path.write_text(json.dumps(data))
    return path


def _labels(spec: DatasetSpec) -> dict[str, tuple[int, ...]]:
    return {s.id: s.labels for s in load_dataset(spec).samples}


def test_labels_are_the_annotated_categories_crowds_included(coco: Path) -> None:
    labels = _labels(DatasetSpec(coco=coco))
    names = {i: tuple(COCO_NAMES[c] for c in found) for i, found in labels.items()}
    assert names[_name(1)] == ("person", "dog")
    assert names[_name(2)] == ("person", "car")  # the crowd's person counts
    assert names[_name(7)] == ("airplane", "giraffe")
    assert labels[_name(9)] == ()  # kept, as an all-background image
    assert list(labels) == [_name(n) for n in ANNOTATIONS]


def test_voc_classes_rename_and_drop_categories(coco: Path) -> None:
    labels = _labels(DatasetSpec(coco=coco, coco_classes="voc"))
    names = {i: tuple(VOC_CLASSES[c] for c in found) for i, found in labels.items()}
    assert names[_name(7)] == ("aeroplane",)  # giraffe dropped
    assert names[_name(13)] == ("car", "dog")
    assert labels[_name(9)] == ()


def test_class_lists_follow_category_ids_or_voc(coco: Path, tmp_path: Path) -> None:
    assert class_names(DatasetSpec(coco=coco)) == COCO_NAMES  # by id, names as in the JSON
    assert class_names(DatasetSpec(coco=coco, coco_classes="voc")) == VOC_CLASSES
    subset = tmp_path / "classes.txt"
    subset.write_text("dog\nperson\n")
    spec = DatasetSpec(coco=coco, classes=subset)
    assert _labels(spec)[_name(1)] == (0, 1) and _labels(spec)[_name(10)] == ()
    truth = dataset_format(spec).ground_truth(spec)
    np.testing.assert_array_equal(truth.read(_name(1)), _expected(1, {18: 0, 1: 1}))
    subset.write_text("dog\nunicorn\n")
    with pytest.raises(IgcamError, match="'unicorn' is no category"):
        load_dataset(spec)


@pytest.mark.parametrize(("classes", "ids"), [("coco", COCO_IDS), ("voc", VOC_IDS)])
def test_ground_truth_is_the_hand_drawn_mask(coco: Path, classes: str, ids: dict) -> None:
    spec = DatasetSpec(coco=coco, coco_classes=classes)
    truth = dataset_format(spec).ground_truth(spec)
    assert truth.ids() == sorted(_name(n) for n in ANNOTATIONS)
    for number in ANNOTATIONS:
        np.testing.assert_array_equal(truth.read(_name(number)), _expected(number, ids))
    one = truth.read(_name(1))  # the small dog stays on top of the large person
    assert one[25, 25] == ids[18] + 1 and one[10, 10] == ids[1] + 1
    two = truth.read(_name(2))  # crowd ignored where the car is not
    assert two[50, 5] == 255 and two[20, 35] == ids[3] + 1 and two[50, 50] == 0
    seven = truth.read(_name(7))
    assert seven[30, 10] == (0 if classes == "voc" else ids[25] + 1)  # giraffe: background
    assert seven[44, 44] == ids[5] + 1
    assert not truth.read(_name(9)).any()


def test_image_folder_is_guessed_from_the_file_name(coco: Path, tmp_path: Path) -> None:
    dataset = load_dataset(DatasetSpec(coco=coco))
    assert dataset.samples[0].image == coco.parent.parent / "train2014" / f"{_name(1)}.jpg"
    elsewhere = tmp_path / "instances_val.json"
    elsewhere.write_bytes(coco.read_bytes())
    with pytest.raises(IgcamError, match="pass --coco-images DIR"):
        load_dataset(DatasetSpec(coco=elsewhere))
    given = load_dataset(DatasetSpec(coco=elsewhere, coco_images=coco.parent.parent / "train2014"))
    assert [s.id for s in given.samples] == [s.id for s in dataset.samples]


def _predictions(folder: Path, coco: Path, wrong: bool = False) -> Path:
    folder.mkdir()
    for number in ANNOTATIONS:
        labels = _expected(number, COCO_IDS)
        save_label_map(folder / f"{_name(number)}.png",
                       np.where(labels == 255, 0, labels) if not wrong else labels * 0)
    return folder


def test_eval_scores_against_the_annotations(coco: Path, tmp_path: Path) -> None:
    perfect = _predictions(tmp_path / "perfect", coco)  # in worker processes: drawn there
    result = igcam("eval", "--pred", perfect, "--coco", coco, "--workers", "2", "--out",
                   tmp_path / "perfect.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "perfect.json").read_text())["report"]
    assert report["miou"] == pytest.approx(1.0) and report["images"] == len(ANNOTATIONS)
    wrong = _predictions(tmp_path / "wrong", coco, wrong=True)
    result = igcam("eval", "--pred", wrong, "--coco", coco, "--out", tmp_path / "wrong.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "wrong.json").read_text())["report"]["miou"] < 0.5


@pytest.mark.slow
def test_run_on_coco_end_to_end(coco: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = igcam("run", "--run", run, "--coco", coco, "--epochs", "1", "--crop", "64",
                   "--batch-size", "4", "--scales", "1.0", "--refine", "none", "--device", "cpu",
                   "--vis", "2")
    assert result.returncode == 0, result.stderr
    masks = sorted((run / "refine-lpcam-none").glob("*.png"))
    assert [p.stem for p in masks] == sorted(_name(n) for n in ANNOTATIONS)
    assert read_label_map(masks[0]).shape == (SIDE, SIDE)
    for name in ("seed", "mask"):
        manifest = json.loads((run / "eval" / f"{name}.json").read_text())
        assert manifest["report"]["images"] == len(ANNOTATIONS)
        assert manifest["inputs"]["gt"] == str(coco)
        assert set(manifest["report"]["iou"]) == {"background", *COCO_NAMES}
    assert len(list((run / "vis").glob("*.jpg"))) == 2
    page = (run / "report.html").read_text()
    assert str(coco) in page and list((run / "report").glob("*.gt.jpg"))


def test_bad_inputs_are_one_line_errors(coco: Path, tmp_path: Path) -> None:
    def train(*data: str | Path):
        return igcam("train-cls", "--run", tmp_path / "run", *data, "--epochs", "1",
                     "--device", "cpu")

    one_line_error(train("--coco", tmp_path / "absent.json"), "absent.json not found")
    one_line_error(train("--coco", coco, "--voc", tmp_path), "give exactly one of")
    one_line_error(train("--coco", coco, "--coco-classes", "ade"), "--coco-classes")


@pytest.mark.parametrize(("content", "message"), [
    ({"images": [], "annotations": []}, "not a COCO instances file"),  # captions
    ("{\"images\": [", "invalid JSON"),
    ({"images": [], "annotations": [{"image_id": 1, "category_id": 2}],
      "categories": [{"id": 1, "name": "dog"}]}, "names category 2"),
    ({"images": [{"id": 1, "file_name": "../x.jpg", "height": 8, "width": 8}],
      "annotations": [], "categories": [{"id": 1, "name": "dog"}]},
     "not a name inside the image folder"),
    ({"images": [], "annotations": [], "categories": []}, "'categories' is empty"),
    ({"images": [{"id": 4, "file_name": "a.jpg", "height": 8, "width": 8},
                 {"id": 4, "file_name": "b.jpg", "height": 8, "width": 8}],
      "annotations": [], "categories": [{"id": 1, "name": "dog"}]},
     "images 'a.jpg' and 'b.jpg' share the numeric id 4"),
])
def test_broken_annotation_files_are_errors(tmp_path: Path, content: object,
                                            message: str) -> None:
    path = tmp_path / "instances_x.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(IgcamError, match=message):
        load_dataset(DatasetSpec(coco=path, coco_images=tmp_path))


@pytest.mark.parametrize(("spec", "message"), [
    ({"coco_images": "nowhere"}, "nowhere is not a directory"),
    ({"split": "val"}, "--split does not apply to --coco"),
    ({"coco": None, "images": ".", "coco_images": "."}, "--coco-images needs --coco"),
])
def test_options_that_do_not_fit_are_errors(coco: Path, tmp_path: Path, spec: dict,
                                            message: str) -> None:
    values = {"coco": coco, **spec}
    values = {k: tmp_path / v if k != "split" and isinstance(v, str) else v
              for k, v in values.items()}
    with pytest.raises(IgcamError, match=message):
        load_dataset(DatasetSpec(**values))


def test_folders_made_before_the_coco_options_keep_their_recipe(tiny_voc: Path) -> None:
    """A manifest's recipe without the COCO keys matches a config that gives none of them."""
    now = {"epochs": 2, "dataset": DatasetSpec(voc=tiny_voc).describe()}
    before = {"epochs": 2, "dataset": {k: v for k, v in now["dataset"].items()
                                       if not k.startswith("coco")}}
    assert recipe_differences(now, before) == []
    other = {**now, "dataset": {**now["dataset"], "coco_classes": "voc", "split": "val"}}
    assert recipe_differences(other, before) == ["dataset.coco_classes", "dataset.split"]


@pytest.mark.parametrize("polygon", [[[1, 2]], [[1, 2, 3, 4]], [[0, 0, 1e9, 0, 1e9, 1e9]],
                                     [[0, 0, "x", 0, 5, 5]], [[0, 0, float("nan"), 0, 5, 5]]])
def test_a_degenerate_polygon_is_a_counted_warning_in_every_worker(
        coco: Path, tmp_path: Path, polygon: list) -> None:
    """Fewer than 3 points made pycocotools raise; 1e9 made it crash the process (and an eval
    with --workers 2 wait for the dead worker forever)."""
    data = json.loads(coco.read_text())
    bad = next(a for a in data["annotations"] if a["image_id"] == 10)
    bad["segmentation"] = polygon
    broken = tmp_path / "instances_train2014.json"
    broken.write_text(json.dumps(data, allow_nan=True))
    perfect = _predictions(tmp_path / "perfect", coco)
    for workers in ("1", "2"):
        out = tmp_path / f"report-{workers}.json"
        result = igcam("eval", "--pred", perfect, "--coco", broken, "--coco-images",
                       coco.parent.parent / "train2014", "--workers", workers, "--out", out)
        assert result.returncode == 0, result.stderr
        report = json.loads(out.read_text())["report"]
        assert report["missing_or_failed"] == 1 and "polygon" in report["problems"][0]
        assert _name(10) in report["problems"][0]
