"""The hostile-input corpus of issue 24: inputs as users really make them, built at test time.

Every input kind the command line reads (an image folder, a VOC tree, a labels CSV or JSON, a
class list, a split file, a COCO annotation file, the numeric options of every step) has
generators of the classes that once broke a step: odd encodings, rich-markup and TeX
characters in names and paths, degenerate geometry, duplicates and case-duplicates, NaN,
infinite, huge and negative numbers, truncated and empty files, and CSVs as Excel writes them.
Each generator turns a source dataset into :class:`Case` objects: files under the case's own
folder and the ``igcam`` command to run on them, with what its output must be when it exits 0.
``tests/test_hostile.py`` runs one of each; ``bench/fuzz.py --hostile`` runs many variations
(``rng``) of each. :func:`fuzzing.check_case` holds the property every case must keep.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from igcam_cli.datasets import DatasetSpec, load_dataset

# The classes of the demo dataset (tests/conftest.py's tiny_voc, bench/fuzz.py's data).
CLASSES = ("disc", "square", "triangle")
# Names and path parts that rich would read as markup, or TeX as maths, if anything rendered
# user text instead of printing it.
MARKUP = ("[red]", "[/]", "a[/]b", "$^$", "[bold]x[/bold]", "\\[x]", "$\\frac{1}{0}$")


@dataclass(frozen=True)
class Invocation:
    """The command a case runs, and what its output must be when it exits 0.

    ``outputs`` is the per-image folder whose files its manifest must count (``suffix`` the
    files' ending); ``expect`` says what is wrong with a successful run's output (empty when
    it is right): the check for silent wrong results. ``refuse``: any success is wrong."""

    args: tuple[str | Path, ...]
    outputs: Path | None = None
    suffix: str = ".npz"
    expect: Callable[[], list[str]] | None = None
    refuse: bool = False  # only exit status 2 is right (e.g. a file that must not be guessed)


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(folder)`` writes it below ``folder`` and says what to run."""

    kind: str  # the input kind, a key of GENERATORS
    name: str  # what is hostile about it
    build: Callable[[Path], Invocation] = field(compare=False)


def _photos(source: Path, folder: Path, names: list[str | bytes]) -> Path:
    """``folder`` holding the source dataset's first images under ``names`` (bytes: a file
    name that is not UTF-8)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = sorted((source / "JPEGImages").glob("*.jpg"))
    for image, name in zip(images, names, strict=False):
        target = os.path.join(os.fsencode(folder), name if isinstance(name, bytes)
                              else os.fsencode(name))
        shutil.copyfile(image, target)
    return folder


def _propose(data: tuple[str | Path, ...], run: Path, *extra: str | Path) -> tuple:
    return ("propose", "--run", run, *data, "--mode", "single", *extra)


def _proposals_of(run: Path, ids: set[str]) -> Callable[[], list[str]]:
    """What is wrong when ``RUN/propose`` does not hold exactly one file per id of ``ids``."""
    def expect() -> list[str]:
        found = {os.fsdecode(p.name)[: -len(".npz")] for p in (run / "propose").glob("*.npz")}
        return [] if found == ids else [f"proposals for {sorted(found - ids)[:3]}, none for "
                                        f"{sorted(ids - found)[:3]}"]
    return expect


def _labels_of(spec: DatasetSpec, wanted: dict[str, tuple[int, ...] | None]
               ) -> Callable[[], list[str]]:
    """What is wrong when the dataset ``spec`` reads back labels other than ``wanted``."""
    def expect() -> list[str]:
        got = {s.id: s.labels for s in load_dataset(spec).samples}
        return [] if got == wanted else [f"labels {got} instead of {wanted}"]
    return expect


# --- image folders ------------------------------------------------------------------------

def image_folder_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """File names and folders that are markup, not UTF-8, duplicates in case or suffix; and
    image files that are empty or cut short."""
    def named(names: list[str | bytes], ids: set[str], parent: str = "photos") -> Callable:
        def build(folder: Path) -> Invocation:
            photos = _photos(source, folder / parent, names)
            run = folder / "run"
            return Invocation(_propose(("--images", photos), run), run / "propose",
                              expect=_proposals_of(run, ids))
        return build

    file_names = [m for m in MARKUP if "/" not in m]  # "[/]" is no file name on POSIX
    mark = file_names[int(rng.integers(len(file_names)))]
    yield Case("image folder", f"markup file name {mark!r}",
               named([f"{mark}.jpg", "plain.jpg"], {mark, "plain"}))
    yield Case("image folder", f"markup folder name {mark!r}",
               named(["a.jpg", "b.jpg"], {"a", "b"}, parent=mark.replace("/", "_")))
    latin = bytes([int(rng.integers(0xC0, 0x100))])
    yield Case("image folder", "Latin-1 file name", named(
        [b"caf" + latin + b".jpg", "b.jpg"], {os.fsdecode(b"caf" + latin), "b"}))
    yield Case("image folder", "names that differ in case only",
               named(["photo.jpg", "PHOTO.jpg", "Photo.JPG"], {"photo", "PHOTO", "Photo"}))

    def same_stem(folder: Path) -> Invocation:
        """photo.jpg and photo.png: one id, two images; one of them must be warned about."""
        photos = _photos(source, folder / "photos", ["photo.jpg", "other.jpg"])
        shutil.copyfile(photos / "other.jpg", photos / "photo.png")
        run = folder / "run"
        return Invocation(_propose(("--images", photos), run), run / "propose",
                          expect=_proposals_of(run, {"photo", "other"}))
    yield Case("image folder", "two images of one id (photo.jpg, photo.png)", same_stem)

    for damage in ("empty", "truncated"):
        def broken(folder: Path, damage: str = damage) -> Invocation:
            photos = _photos(source, folder / "photos", ["good.jpg", "bad.jpg"])
            data = (photos / "bad.jpg").read_bytes()
            cut = 0 if damage == "empty" else int(rng.integers(1, len(data) // 2))
            (photos / "bad.jpg").write_bytes(data[:cut])
            run = folder / "run"
            return Invocation(_propose(("--images", photos), run), run / "propose",
                              expect=_proposals_of(run, {"good"}))
        yield Case("image folder", f"{damage} image file", broken)


# --- VOC trees and split files ------------------------------------------------------------

def _voc(source: Path, folder: Path) -> Path:
    root = folder / "voc"
    shutil.copytree(source, root)
    return root


def _split(root: Path) -> Path:
    return root / "ImageSets" / "Segmentation" / "train.txt"


def _source_ids(source: Path, count: int) -> list[str]:
    return [p.stem for p in sorted((source / "JPEGImages").glob("*.jpg"))[:count]]


ENCODINGS: dict[str, Callable[[str], bytes]] = {
    "UTF-8 with BOM": lambda text: b"\xef\xbb\xbf" + text.encode(),
    "CRLF": lambda text: text.replace("\n", "\r\n").encode(),
    "UTF-16": lambda text: text.encode("utf-16"),
    "Latin-1": lambda text: text.encode("latin-1"),
}
# What a file in each encoding must read as: the same (BOM and CRLF are UTF-8) or refused
# (UTF-16 and Latin-1 are a one-line error, never a guess).
READABLE = {"UTF-8 with BOM", "CRLF"}


def split_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """Split files in every encoding, with repeated ids, ids that are markup, none at all."""
    ids = _source_ids(source, 3)

    def written(data: bytes, wanted: set[str] | None) -> Callable[[Path], Invocation]:
        """A split of ``data`` whose proposals must be those of ``wanted`` (None: refused)."""
        def build(folder: Path) -> Invocation:
            root = _voc(source, folder)
            _split(root).write_bytes(data)
            run = folder / "run"
            return Invocation(_propose(("--voc", root), run), run / "propose",
                              expect=_proposals_of(run, wanted) if wanted else None,
                              refuse=wanted is None)
        return build

    accent = "é" if rng.integers(2) else "ü"
    for encoding, encode in ENCODINGS.items():
        text = "\n".join([*ids, f"caf{accent}"]) + "\n"
        yield Case("split file", encoding, written(
            encode(text), set(ids) if encoding in READABLE else None))
    yield Case("split file", "an id listed twice", written(
        f"{ids[0]}\n{ids[1]}\n{ids[0]}\n".encode(), {ids[0], ids[1]}))
    mark = MARKUP[int(rng.integers(len(MARKUP)))]
    yield Case("split file", f"markup id {mark!r}", written(f"{ids[0]}\n{mark}\n".encode(),
                                                           {ids[0]}))
    yield Case("split file", "empty", written(b"", None))
    yield Case("split file", "blank lines only", written(b"\n \r\n\t\n", None))
    yield Case("split file", "truncated mid-id", written(f"{ids[0]}\n{ids[1][:4]}".encode(),
                                                         {ids[0]}))


def voc_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """Masks and XML annotations that are damaged, the wrong size or name unknown classes."""
    ids = _source_ids(source, 3)

    def damaged(how: str) -> Callable[[Path], Invocation]:
        def build(folder: Path) -> Invocation:
            root = _voc(source, folder)
            _split(root).write_text("\n".join(ids) + "\n")
            mask = root / "SegmentationClass" / f"{ids[1]}.png"
            if how == "truncated mask":
                mask.write_bytes(mask.read_bytes()[: int(rng.integers(0, 60))])
            elif how == "mask of another size":
                from PIL import Image
                Image.new("P", (7, 5)).save(mask)
            else:  # XML annotations instead of masks
                shutil.rmtree(root / "SegmentationClass")
                (root / "Annotations").mkdir()
                for image_id in ids:
                    name = "[red]unicorn" if how == "unknown class in XML" else "disc"
                    xml = f"<annotation><object><name>{name}</name></object></annotation>"
                    if how == "truncated XML" and image_id == ids[1]:
                        xml = xml[: int(rng.integers(1, len(xml) - 1))]
                    (root / "Annotations" / f"{image_id}.xml").write_text(xml)
            run = folder / "run"
            unknown = how == "unknown class in XML"  # every image a problem: none usable
            return Invocation(_propose(("--voc", root), run), run / "propose",
                              expect=_proposals_of(run, {ids[0], ids[2]}), refuse=unknown)
        return build

    for how in ("truncated mask", "mask of another size", "truncated XML",
                "unknown class in XML"):
        yield Case("VOC tree", how, damaged(how))


# --- class lists --------------------------------------------------------------------------

def class_list_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """Class lists in every encoding, with case-duplicates, markup names, none, too many."""
    def written(data: bytes, wanted: tuple[str, ...] | None) -> Callable[[Path], Invocation]:
        """A class list of ``data`` that must read as ``wanted`` (None: refused)."""
        def build(folder: Path) -> Invocation:
            photos = _photos(source, folder / "photos", ["a.jpg", "b.jpg"])
            classes = folder / "classes.txt"
            classes.write_bytes(data)
            run = folder / "run"

            def expect() -> list[str]:
                from igcam_cli.datasets import class_names
                got = class_names(DatasetSpec(images=photos, classes=classes))
                return [] if got == wanted else [f"classes {got} instead of {wanted}"]
            return Invocation(_propose(("--images", photos, "--classes", classes), run),
                              run / "propose", expect=expect if wanted else None,
                              refuse=wanted is None)
        return build

    names = ("disc", f"caf{'é' if rng.integers(2) else 'ø'}", "square")
    for encoding, encode in ENCODINGS.items():
        yield Case("class list", encoding, written(
            encode("\n".join(names) + "\n"), names if encoding in READABLE else None))
    mark = MARKUP[int(rng.integers(len(MARKUP)))]
    yield Case("class list", f"markup class {mark!r}",
               written(f"disc\n{mark}\n".encode(), ("disc", mark)))
    yield Case("class list", "names that differ in case only",
               written(b"Dog\ncat\nDOG\n", None))
    yield Case("class list", "empty", written(b"", None))
    yield Case("class list", "255 classes", written(
        "".join(f"c{i}\n" for i in range(255)).encode(), None))


# --- labels files -------------------------------------------------------------------------

def labels_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """Labels CSVs as Excel and Notepad write them, and JSON files with repeated ids."""
    def written(name: str, data: bytes, wanted: dict[str, tuple[int, ...] | None] | None
                ) -> Callable[[Path], Invocation]:
        """A labels file ``name`` of ``data`` that must read as ``wanted`` (None: refused)."""
        def build(folder: Path) -> Invocation:
            photos = _photos(source, folder / "photos", ["p0.jpg", "p1.jpg", "p2.jpg"])
            classes = folder / "classes.txt"
            classes.write_text("\n".join(CLASSES) + "\n")
            labels = folder / name
            labels.write_bytes(data)
            spec = DatasetSpec(images=photos, labels=labels, classes=classes)
            run = folder / "run"
            return Invocation(
                _propose(("--images", photos, "--labels", labels, "--classes", classes), run),
                run / "propose", expect=_labels_of(spec, wanted) if wanted else None,
                refuse=wanted is None)
        return build

    right = {"p0": (0,), "p1": (1, 2), "p2": (2,)}
    excel = {
        "BOM and CRLF": b'\xef\xbb\xbfimage_id,labels\r\np0,disc\r\np1,square;triangle\r\n'
                        b'p2,triangle\r\n',
        "trailing empty columns": b"p0,disc,,\np1,square;triangle,,,\np2,triangle,\n",
        "quoted fields": b'"image_id","labels"\n"p0","disc"\n"p1","square; triangle"\n'
                         b'"p2","triangle"\n',
        "labels in columns": b"p0,disc\np1,square,triangle\np2,triangle\n",
        "class names in other cases": b"p0,DISC\np1,Square;TRIANGLE\np2,Triangle\n",
        "file names as ids": b"p0.jpg,disc\np1.JPG,square;triangle\np2.jpg,triangle\n",
    }
    for name, data in excel.items():
        yield Case("labels file", f"Excel CSV: {name}", written("labels.csv", data, right))
    # Excel in a locale whose decimal mark is a comma separates fields with semicolons: the
    # whole line is then one field, an id no image has.
    yield Case("labels file", "Excel CSV: semicolon-separated", written(
        "labels.csv", b"image_id;labels\np0;disc\np1;square\n",
        {"p0": None, "p1": None, "p2": None}))
    for encoding, encode in ENCODINGS.items():
        text = "p0,disc\np1,square;triangle\np2,triangle\n# caf\u00e9\n"
        yield Case("labels file", encoding, written(
            "labels.csv", encode(text), right if encoding in READABLE else None))
    yield Case("labels file", "an image labelled twice, differently",
               written("labels.csv", b"p0,disc\np1,square\np0,square\n", None))
    yield Case("labels file", "an image labelled twice in other case",
               written("labels.csv", b"p0,disc\nP0,square\n",
                       {"p0": (0,), "p1": None, "p2": None}))
    yield Case("labels file", "JSON with a repeated id",
               written("labels.json", b'{"p0": ["disc"], "p0": ["square"]}', None))
    mark = MARKUP[int(rng.integers(len(MARKUP)))]
    yield Case("labels file", f"unknown class {mark!r}",
               written("labels.csv", f"p0,{mark}\n".encode(), None))
    yield Case("labels file", "truncated JSON", written(
        "labels.json", json.dumps(right).encode()[: int(rng.integers(1, 20))], None))
    yield Case("labels file", "empty CSV", written("labels.csv", b"", {
        "p0": None, "p1": None, "p2": None}))


# --- COCO annotation files ----------------------------------------------------------------

def coco_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """Annotation files with degenerate geometry, repeated ids, no categories, odd bytes."""
    from PIL import Image

    ids = _source_ids(source, 3)

    def base() -> dict:
        images = [{"id": n + 1, "file_name": f"{i}.jpg", "height": 64, "width": 64}
                  for n, i in enumerate(ids)]
        square = [8.0, 8.0, 40.0, 8.0, 40.0, 40.0, 8.0, 40.0]
        annotations = [{"id": n + 1, "image_id": n + 1, "category_id": 1 + n % 2,
                        "iscrowd": 0, "segmentation": [square]} for n in range(len(ids))]
        categories = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]
        return {"images": images, "annotations": annotations, "categories": categories}

    def written(change: Callable[[dict], bytes | dict], graded: set[str] | None,
                refuse: bool = False) -> Callable[[Path], Invocation]:
        """A COCO file ``change`` makes of the base one, scored by eval against masks of the
        images' size; ``graded``: the ids whose ground truth can be drawn (None: not
        checked), ``refuse``: a file that must be refused."""
        def build(folder: Path) -> Invocation:
            images = _photos(source, folder / "train", [f"{i}.jpg" for i in ids])
            made = change(base())
            data = made if isinstance(made, bytes) else json.dumps(made).encode()
            annotations = folder / "instances_train.json"
            annotations.write_bytes(data)
            pred = folder / "pred"
            pred.mkdir()
            for image_id in ids:
                Image.new("P", (64, 64)).save(pred / f"{image_id}.png")
            report = folder / "run" / "eval.json"

            def expect() -> list[str]:
                scores = json.loads(report.read_text())["report"]
                scored = scores["images"] - scores["missing_or_failed"]
                return [] if scored == len(graded or ()) else [
                    f"{scored} images scored, not {len(graded or ())}"]
            return Invocation(("eval", "--pred", pred, "--coco", annotations, "--coco-images",
                               images, "--out", report), expect=None if graded is None
                              else expect, refuse=refuse)
        return build

    def polygon(points: list[float]) -> Callable[[dict], dict]:
        def change(data: dict) -> dict:
            data["annotations"][1]["segmentation"] = [points]
            return data
        return change

    keep = {ids[0], ids[2]}
    yield Case("COCO JSON", "polygon of 2 points", written(polygon([1.0, 1.0, 5.0, 5.0]), keep))
    yield Case("COCO JSON", "empty polygon", written(polygon([]), keep))
    huge = float(10 ** int(rng.integers(7, 12)))
    yield Case("COCO JSON", f"polygon at {huge:g}", written(
        polygon([0.0, 0.0, huge, 0.0, huge, huge]), keep))
    yield Case("COCO JSON", "NaN coordinates", written(
        lambda d: json.dumps(polygon([0.0, 0.0, float("nan"), 1.0, 2.0, 2.0])(d)).encode(),
        keep))

    def sized(height: int, width: int) -> Callable[[dict], dict]:
        def change(data: dict) -> dict:
            data["images"][1].update(height=height, width=width)
            return data
        return change
    for height, width in ((0, 0), (-64, 64)):
        yield Case("COCO JSON", f"image of {width}x{height}",
                   written(sized(height, width), None, refuse=True))
    yield Case("COCO JSON", "image of 1e9 x 1e9", written(sized(10 ** 9, 10 ** 9), keep))

    def no_categories(data: dict) -> dict:
        data["categories"], data["annotations"] = [], []
        return data
    yield Case("COCO JSON", "no categories", written(no_categories, None, refuse=True))

    def repeated_image_id(data: dict) -> dict:
        data["images"][1]["id"] = 1
        return data
    yield Case("COCO JSON", "two images of one numeric id",
               written(repeated_image_id, None, refuse=True))

    def repeated_category_id(data: dict) -> dict:
        data["categories"].append({"id": 1, "name": "triangle"})
        return data
    yield Case("COCO JSON", "two categories of one id",
               written(repeated_category_id, None, refuse=True))

    def case_categories(data: dict) -> dict:
        data["categories"][1]["name"] = "DISC"
        return data
    yield Case("COCO JSON", "category names that differ in case only (one class)",
               written(case_categories, set(ids)))
    yield Case("COCO JSON", "markup category name", written(
        lambda d: {**d, "categories": [{"id": 1, "name": "[red]"}, {"id": 2, "name": "$^$"}]},
        set(ids)))
    yield Case("COCO JSON", "segmentation null", written(
        lambda d: (d["annotations"][1].update(segmentation=None), d)[1], keep))
    yield Case("COCO JSON", "RLE of garbage", written(
        lambda d: (d["annotations"][1].update(segmentation={"counts": "\x00\xff!!",
                                                            "size": [64, 64]}), d)[1], keep))
    yield Case("COCO JSON", "truncated", written(
        lambda d: json.dumps(d).encode()[: int(rng.integers(1, 200))], None,
        refuse=True))
    yield Case("COCO JSON", "UTF-8 with BOM", written(
        lambda d: b"\xef\xbb\xbf" + json.dumps(d).encode(), set(ids)))
    yield Case("COCO JSON", "UTF-16", written(lambda d: json.dumps(d).encode("utf-16"),
                                              set(ids)))
    yield Case("COCO JSON", "lone surrogate in a file name", written(
        lambda d: (d["images"][1].update(file_name="\ud800.jpg"), d)[1], None))


# --- numeric options -----------------------------------------------------------------------

NON_NUMBERS = ("nan", "inf", "-inf")
# Values every numeric option must either refuse in one line or run with: signs, zero, the
# float and int extremes. A huge count is left out for the options that are amounts of work
# (a run of 10**12 CRF iterations is long by request, not a hang).
EXTREMES = ("-1", "0", "1e-300", "0.5", "1e30", str(2 ** 63), str(-(2 ** 63) - 1))
WORK_AMOUNTS = ("iters", "steps", "epochs", "rounds", "iterations", "top")


@dataclass(frozen=True)
class NumericOption:
    """A numeric option of a command, as ``help.json`` lists it."""

    command: str
    flag: str  # --crf-iters
    kind: str  # int, float or list

    def counts_work(self) -> bool:
        """Whether the option is an amount of work, which a huge value asks for by request."""
        return self.flag.split("-")[-1] in WORK_AMOUNTS


def numeric_options() -> list[NumericOption]:
    """Every int, float and list-of-numbers option of every command."""
    import igcam_cli

    commands = json.loads((Path(igcam_cli.__file__).parent / "help.json").read_text())
    return [NumericOption(command, spec["decls"][0].split("/")[0], spec["kind"])
            for command, specs in commands.items() for spec in specs
            if spec["kind"] in ("int", "float") or spec["name"] in ("scales", "mam_scales")]


def synthetic_cams(folder: Path, source: Path, count: int = 3) -> Path:
    """CAM files of the source's first images, one class at 0.5 over a quarter of each."""
    from igcam_cli.artifacts import write_cam

    folder.mkdir(parents=True)
    for image in sorted((source / "JPEGImages").glob("*.jpg"))[:count]:
        maps = np.zeros((1, 64, 64), np.float16)
        maps[0, :32, :32] = 0.5
        write_cam(folder / f"{image.stem}.npz", np.array([0]), maps, np.full(3, 0.9), image)
    return folder


def _part(flag: str, command: str) -> tuple[str, ...]:
    """The ``--method`` that makes a part's option count (``--crf-iters``: crf)."""
    from igcam_cli.refiners import REFINERS

    name = flag[2:].split("-")[0]
    return ("--method", name) if command == "refine" and name in REFINERS else ()


# The commands whose options run on real inputs in a fraction of a second: how to run each
# below ``folder`` on the source dataset (outputs: the per-image folder and its files).
def _command(command: str, folder: Path, source: Path) -> Invocation:
    run = folder / "run"
    if command == "propose":
        return Invocation(_propose(("--voc", source), run), run / "propose")
    if command == "refine":
        cams = synthetic_cams(folder / "run" / "cam", source)
        return Invocation(("refine", "--run", run, "--cams", cams, "--out", run / "masks"),
                          run / "masks", ".png")
    if command == "eval":
        return Invocation(("eval", "--pred", source / "SegmentationClass", "--voc", source,
                           "--out", run / "eval.json"))
    if command == "export":
        return Invocation(("export", "--masks", source / "SegmentationClass", "--classes",
                           source / "classes.txt", "--out", run / "export.json"))
    assert command == "report", command
    run.mkdir(parents=True)
    return Invocation(("report", "--run", run))


RUNNABLE = ("propose", "refine", "eval", "export", "report")


def option_case(option: NumericOption, value: str, source: Path) -> Case:
    """``option`` set to ``value``: a command that runs on ``source`` (RUNNABLE), else the
    option alone, which must be refused before any work when ``value`` is no number."""
    def build(folder: Path) -> Invocation:
        if option.command not in RUNNABLE:
            run = folder / "run"
            return Invocation((option.command, "--run", run, option.flag, value),
                              refuse=True)
        base = _command(option.command, folder, source)
        return Invocation((*base.args, *_part(option.flag, option.command), option.flag,
                           value), base.outputs, base.suffix, refuse=value in NON_NUMBERS)
    return Case("numeric option", f"{option.command} {option.flag} {value}", build)


def option_cases(source: Path, rng: np.random.Generator) -> Iterator[Case]:
    """Every numeric option of every command set to a value that is no number (refused in
    one line before any work); the options of the quick commands also to a drawn extreme."""
    for option in numeric_options():
        if option.command in ("merge-shards", "status"):
            continue
        yield option_case(option, NON_NUMBERS[int(rng.integers(len(NON_NUMBERS)))], source)
        extremes = [v for v in EXTREMES
                    if not (option.counts_work() and len(v) > 3 and v[0] != "-")]
        if option.command in RUNNABLE:
            yield option_case(option, extremes[int(rng.integers(len(extremes)))], source)


GENERATORS: dict[str, Callable[[Path, np.random.Generator], Iterator[Case]]] = {
    "image folder": image_folder_cases,
    "VOC tree": voc_cases,
    "split file": split_cases,
    "class list": class_list_cases,
    "labels file": labels_cases,
    "COCO JSON": coco_cases,
    "numeric option": option_cases,
}


def corpus(source: Path, rng: np.random.Generator) -> list[Case]:
    """One case of every class of every input kind (the classes' details drawn from ``rng``)."""
    return [case for generate in GENERATORS.values() for case in generate(source, rng)]
