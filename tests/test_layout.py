"""The run directory has one owner: ``igcam_cli.artifacts`` names every folder and file in it.

The scan below fails when a module outside ``igcam_cli/artifacts/`` builds a run-directory path
from a string (``out / "affinity.pt"``, ``folder.glob("manifest*.json")``, ``out / f"{id}.npz"``,
``folder.with_name(f"refine-{x}")``) or keeps such a name in a constant of its own: a folder
or file renamed in the layout module would otherwise silently stop being found there.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from igcam_cli.artifacts import (
    DEFAULT_REFINER,
    PLAIN_CAM,
    MadeBy,
    RunDir,
    StepRecord,
    ensure_dir,
    finished_manifests,
    made_by,
    read_manifest,
)
from igcam_cli.errors import IgcamError

PACKAGE = Path(__file__).resolve().parents[1] / "igcam_cli"
OWNER = PACKAGE / "artifacts"
# Path segments that name something in a run directory: step folders (and their
# ``<step>-<variant>`` siblings), the fixed files, and the fixed sub-folders.
STEP_FOLDERS = ("train-cls", "propose", "influence", "prototypes", "cam", "train-aff",
                "refine", "train-seg", "predict", "eval", "vis")
FILE_NAMES = re.compile(r"(classifier|prototypes|solution|affinity|segmenter)\.pt|epoch-.*"
                        r"|metrics\.json|scores\.csv|report\.html|manifest([.*].*)?")
SUB_FOLDERS = ("labels", "maps", "scores", "data")
PER_IMAGE = re.compile(r"\*\.(npz|png)")  # <image id>.npz, <image id>.png, "*.npz" globs
# A dataset's own folders (VOC's SegmentationClass/<id>.png) are the dataset format's to name.
DATASET_MODULES = (PACKAGE / "datasets", PACKAGE / "demo_data.py")
PATH_CALLS = {"glob", "rglob", "with_name", "with_stem", "joinpath", "Path"}


def _text(node: ast.AST) -> str | None:
    """A string literal's text, an f-string's literal parts with ``*`` for each field."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)
    return None


def _names_run_path(text: str) -> bool:
    for segment in text.split("/"):
        if FILE_NAMES.fullmatch(segment) or segment in SUB_FOLDERS or PER_IMAGE.fullmatch(segment):
            return True
        if any(segment == step or segment.startswith(step + "-") for step in STEP_FOLDERS):
            return True
    return False


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _path_strings(tree: ast.Module) -> list[tuple[int, str]]:
    """The strings of ``tree`` that build a path (operands of ``/``, arguments of glob,
    with_name, ...) or are kept in a module or class constant, with their lines."""
    built: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            built += [node.left, node.right]
        elif isinstance(node, ast.Call) and _call_name(node) in PATH_CALLS:
            built += node.args
    kept: list[ast.AST] = []  # a constant is one name, not a sentence that mentions paths
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        for statement in scope.body:
            if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Tuple) \
                    and isinstance(statement.value, ast.Tuple):  # A, B = "x", "y"
                kept += statement.value.elts
            elif isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value:
                kept.append(statement.value)  # not a tuple's items: choices, not names
    return sorted((node.lineno, text) for node in built + kept
                  if (text := _text(node)) is not None and _names_run_path(text)
                  and (node in built or not re.search(r"[\s/]", text)))


def test_no_module_but_the_layout_builds_a_run_directory_path() -> None:
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
             for path in sorted(PACKAGE.rglob("*.py")) if not path.is_relative_to(OWNER)
             for line, text in _path_strings(ast.parse(path.read_text()))
             if not (any(path.is_relative_to(d) for d in DATASET_MODULES)
                     and PER_IMAGE.fullmatch(text.rsplit("/", 1)[-1]))]
    assert not wrong, "\n".join(wrong)


def test_the_scan_finds_the_ways_a_path_is_built() -> None:
    source = '''
AFFINITY = "affinity.pt"
a = run / "train-aff" / "affinity.pt"
b = folder.glob("manifest.shard-*.json")
c = folder.with_name(f"refine-{method}")
d = out / f"epoch-{epoch:03d}.pt"
e = out / "scores"
f = out / f"{sample.id}.npz"
g = sorted(cams.glob("*.png"))
ok = out / f"{sample.id}.jpg"
help = "default RUN/train-aff/affinity.pt"
'''
    assert [line for line, _ in _path_strings(ast.parse(source))] == [2, 3, 3, 4, 5, 6, 7, 8, 9]


def _finished(folder: Path, step: str, config: dict, inputs: dict | None = None) -> Path:
    """``folder`` with the manifest that ``step`` run with ``config`` would leave."""
    record = StepRecord(step, config)
    record.inputs = inputs or {}
    record.save(ensure_dir(folder))
    return folder


def test_every_folder_and_file_of_a_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.refine() == run.refine(DEFAULT_REFINER) == tmp_path / "refine"
    assert run.refine("rw+crf") == tmp_path / "refine-rw+crf"
    assert run.masks(PLAIN_CAM, DEFAULT_REFINER) == tmp_path / "refine"
    assert run.masks(PLAIN_CAM, "par") == tmp_path / "refine-par"
    assert run.masks("lpcam", DEFAULT_REFINER) == tmp_path / "refine-lpcam-crf"
    assert run.affinity() == tmp_path / "train-aff" / "affinity.pt"
    assert run.affinity_labels() == tmp_path / "train-aff" / "labels"
    assert RunDir.refined_scores(run.refine()) == tmp_path / "refine" / "scores"
    folder = run.train_cls("stage2")
    assert RunDir.metrics(folder) == folder / "metrics.json"
    assert RunDir.epoch(folder, 7) == folder / "epoch-007.pt"
    for epoch in (10, 2, 9):
        ensure_dir(folder)
        RunDir.epoch(folder, epoch).write_bytes(b"")
    assert [p.name for p in RunDir.epochs(folder)] == ["epoch-002.pt", "epoch-009.pt",
                                                        "epoch-010.pt"]
    assert [RunDir.kind(p) for p in (run.cam(), run.cam("lpcam"), run.masks("lpcam", "crf"),
                                     run.affinity_labels(), tmp_path / "camera")] == [
        "cams", "cams", "masks", None, None]


@pytest.mark.parametrize(("method", "refiners"), [
    (PLAIN_CAM, DEFAULT_REFINER), (PLAIN_CAM, "rw+crf"), ("lpcam", DEFAULT_REFINER),
    ("lpcam+igcam", "par")])
def test_what_made_a_folder_comes_back_from_its_manifest(tmp_path: Path, method: str,
                                                         refiners: str) -> None:
    run = RunDir(tmp_path / "run")
    cams = _finished(run.cam(method), "cam", {"method": method})
    masks = _finished(run.masks(method, refiners), "refine",
                      {"method": refiners, "run": str(run.root), "out": None},
                      {"cams": str(cams)})
    assert made_by(cams) == MadeBy("cam", method=method)
    assert made_by(masks) == MadeBy("refine", method=method, refiners=refiners)


def test_masks_refined_from_a_walk_s_maps_are_made_by_both_chains(tmp_path: Path) -> None:
    """``run`` walks first (keeping the walked maps), then crf labels the walked maps."""
    run = RunDir(tmp_path)
    cams = _finished(run.cam("lpcam"), "cam", {"method": "lpcam"})
    walked = _finished(run.masks("lpcam", "rw"), "refine",
                       {"method": "rw", "run": str(tmp_path), "out": str(run.masks("lpcam", "rw"))},
                       {"cams": str(cams)})
    ensure_dir(RunDir.refined_scores(walked))
    masks = _finished(run.masks("lpcam", "rw+crf"), "refine",
                      {"method": "crf", "run": str(tmp_path),
                       "out": str(run.masks("lpcam", "rw+crf"))},
                      {"cams": str(RunDir.refined_scores(walked))})
    assert made_by(masks) == MadeBy("refine", "lpcam", "rw+crf")
    assert made_by(RunDir.refined_scores(walked)) is None  # maps, not a step's folder


def test_what_made_a_moved_run_s_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in manifests are as typed (relative to where the step ran): a run moved
    elsewhere still says which CAM method its masks come from."""
    monkeypatch.chdir(tmp_path)
    run = RunDir(Path("runs/a"))
    _finished(run.cam("lpcam"), "cam", {"method": "lpcam"})
    _finished(run.refine(), "refine", {"method": "crf", "run": "runs/a", "out": None},
              {"cams": "runs/a/cam-lpcam"})
    moved = tmp_path / "elsewhere" / "a"
    moved.parent.mkdir()
    (tmp_path / "runs" / "a").rename(moved)
    assert made_by(RunDir(moved).refine()) == MadeBy("refine", "lpcam", "crf")


def test_unfinished_and_damaged_manifests(tmp_path: Path) -> None:
    assert made_by(tmp_path) is None and read_manifest(tmp_path) is None
    RunDir.manifest(tmp_path).write_text(json.dumps({"step": "cam", "complete": False}))
    assert made_by(tmp_path) is None
    for damaged in ("", "{not json", "[1, 2]"):
        RunDir.manifest(tmp_path).write_text(damaged)
        with pytest.raises(IgcamError, match=r"^manifest .*manifest\.json is "):
            read_manifest(tmp_path)
        with pytest.raises(IgcamError, match="manifest.json"):
            made_by(tmp_path)
        assert read_manifest(tmp_path, unfinished_if_damaged=True) is None
        problems: list[str] = []
        assert finished_manifests(tmp_path, problems) == [] and len(problems) == 1
