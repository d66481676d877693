"""What a run directory says about itself: training, step manifests, methods and their scores.

Everything here is read from files the steps already wrote (manifests, ``metrics.json``,
``eval/*.json``); nothing is recomputed. Paths inside manifests are as the user typed them,
often relative to the directory the step ran in, so they are resolved against that directory
(recovered from the manifest's own recorded output path), which keeps a moved or copied run
readable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igcam_cli.artifacts import (
    RunDir,
    finished_manifests,
    ran_in,
    read_json,
    recorded_path,
)
from igcam_cli.datasets import DatasetSpec, GroundTruth, MaskFolder, dataset_format
from igcam_cli.errors import IgcamError

# Labels of the recorded keys whose name is not already words: the dataset's (as the data
# options and their inputs record them) and the classifier's abbreviations.
LABELS = {"voc": "VOC folder", "images": "image folder", "labels": "label file",
          "coco": "COCO annotations", "coco_images": "COCO image folder",
          "coco_classes": "COCO classes", "classes": "class list", "num_images": "images",
          "class_names": "classes", "lr": "learning rate", "head_lr_mult": "head learning-rate "
          "factor", "fpn": "FPN neck", "fpn_channels": "FPN channels"}


@dataclass
class Step:
    """One finished step (its manifests, shards summed) or one evaluation."""

    name: str  # the step ("cam", "eval")
    where: str  # its folder or file, relative to the run
    created: str
    seconds: float | None
    counts: dict[str, int]
    warnings: list[str]
    shards: int = 1


@dataclass
class Training:
    """One training stage (a classifier's, or any step that writes ``metrics.json``): its
    settings and per-epoch records, which exist while it still runs."""

    folder: str
    settings: dict[str, Any]
    history: list[dict[str, float]]
    finished: str | None  # when, from its manifest


@dataclass
class Method:
    """A CAM folder (``kind`` "cams") or a pseudo-mask folder ("masks"), evaluated or not."""

    name: str
    kind: str
    path: Path
    files: int
    seconds_per_image: float | None = None
    evaluation: dict[str, Any] | None = None  # the ``report`` of its eval JSON
    eval_file: str | None = None
    other_evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # file: report
    faithfulness: dict[str, Any] | None = None  # an ``eval --faithfulness`` report of it

    @property
    def slug(self) -> str:
        """The name as a file name part (``refine-par/scores`` -> ``refine-par_scores``)."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.name)

    @property
    def threshold(self) -> float | None:
        return self.evaluation.get("threshold") if self.evaluation else None


@dataclass
class RunFacts:
    root: Path
    dataset: dict[str, Any] = field(default_factory=dict)
    trainings: list[Training] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    methods: list[Method] = field(default_factory=list)
    gt: GroundTruth | None = None
    problems: list[str] = field(default_factory=list)  # files the report could not read

    @property
    def scored(self) -> list[Method]:
        return [m for m in self.methods if m.evaluation is not None]

    @property
    def class_names(self) -> list[str]:
        """The foreground classes the run names; empty when no manifest recorded them (refine
        and older cam manifests do not)."""
        names = self.dataset.get("class_names")
        return list(names) if isinstance(names, list | tuple) else []

    @property
    def dataset_rows(self) -> dict[str, Any]:
        """The dataset's table of the page: its settings and image count, by label."""
        return labelled({k: v for k, v in self.dataset.items() if k != "class_names"})


def _eval_report(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """An eval report, or None (noted in ``problems``) when the file is damaged."""
    try:
        return read_json(path, "eval report", "left out")
    except IgcamError as error:
        problems.append(str(error))
        return None


def _scored_folder(recorded: str, out: Any, origin: Path, root: Path) -> Path:
    """The folder an eval scored, where it lies in this run: found through the eval's own
    ``--out`` (``RUN/eval/NAME.json``), so a run that moved is read where it is now; else the
    recorded path."""
    folder = recorded_path(recorded, origin)
    if isinstance(out, str):
        recorded_root = recorded_path(out, origin).parent.parent
        if folder.is_relative_to(recorded_root):
            inside = root / folder.relative_to(recorded_root)
            if inside.is_dir():
                return inside
    return folder


def _name(folder: Path, root: Path) -> str:
    """A method's name: its folder relative to the run (``refine-par/scores``), else its own."""
    resolved, top = folder.resolve(), root.resolve()
    return str(resolved.relative_to(top)) if resolved.is_relative_to(top) else folder.name


def _step(name: str, where: str, manifests: list[dict[str, Any]]) -> Step:
    counts: dict[str, int] = {}
    for manifest in manifests:
        for key, value in (manifest.get("counts") or {}).items():
            if isinstance(value, int | float):
                counts[key] = counts.get(key, 0) + int(value)
    seconds = [m.get("timings", {}).get("total_s") for m in manifests]
    return Step(name=name, where=where, created=max(str(m.get("created", "")) for m in manifests),
                seconds=sum(s for s in seconds if isinstance(s, int | float)) or None,
                counts=counts, warnings=[w for m in manifests for w in m.get("warnings", [])],
                shards=sum(len(m.get("shards") or [m]) for m in manifests))


def _per_image(step: Step) -> float | None:
    processed = step.counts.get("processed", 0)
    return step.seconds / processed if step.seconds and processed else None


def _files(folder: Path, kind: str) -> int:
    return len(RunDir.image_files(folder, kind))


def _ground_truth(dataset: Any, origin: Path) -> GroundTruth | None:
    """The recorded dataset's ground truth, when its format has one (VOC's masks, COCO's
    annotations)."""
    if not isinstance(dataset, dict):
        return None
    try:
        spec = DatasetSpec.from_record(dataset, origin)
        fmt = dataset_format(spec)
        gt = fmt.ground_truth(spec) if fmt is not None else None
    except (IgcamError, OSError, TypeError):
        return None
    return gt if not isinstance(gt, MaskFolder) or gt.folder.is_dir() else None


def read_run(root: Path) -> RunFacts:
    """Everything the report shows about ``root`` except the pictures."""
    facts = RunFacts(root=root)
    methods: dict[Path, Method] = {}
    datasets: list[tuple[bool, dict[str, Any], Path]] = []  # (not a CAM step's, spec, origin)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        manifests = finished_manifests(folder, facts.problems)
        kind = RunDir.kind(folder)
        if kind is not None and _files(folder, kind):
            methods[folder.resolve()] = Method(folder.name, kind, folder, _files(folder, kind))
        if RunDir.metrics(folder).is_file() or (manifests and manifests[0].get("step")
                                                   == "train-cls"):
            facts.trainings.append(_training(folder, manifests, facts.problems))
        if not manifests:
            continue
        step = _step(str(manifests[0].get("step", folder.name)), folder.name, manifests)
        facts.steps.append(step)
        if folder.resolve() in methods:
            methods[folder.resolve()].seconds_per_image = _per_image(step)
        first = manifests[0]
        facts.versions.update(first.get("versions") or {})
        inputs = first.get("inputs") or {}
        if isinstance(inputs.get("dataset"), dict):
            spec = {k: v for k, v in inputs["dataset"].items() if v is not None}
            origin = ran_in(root, (first.get("config") or {}).get("run"))
            datasets.append((kind != "cams", spec, origin))
            if step.name == "train-cls" or not facts.dataset:  # the classifier's data first
                facts.dataset = {**spec, **{k: inputs[k] for k in ("num_images", "class_names")
                                            if k in inputs}}
    _evaluations(root, facts, methods)
    facts.methods = sorted(methods.values(), key=lambda m: (m.kind != "cams", m.name))
    if facts.gt is None and datasets:  # not evaluated: the ground truth of the pictured images
        _, spec, origin = min(datasets, key=lambda item: item[0])
        facts.gt = _ground_truth(spec, origin)
    facts.steps.sort(key=lambda s: s.created)
    facts.trainings.sort(key=lambda t: (t.finished is None, t.finished or ""))
    return facts


def applicable(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without those that only matter under a switch that is off: a key
    ``<switch>_...`` goes when the setting ``<switch>`` is false or unset (``fpn_channels``
    without ``fpn``, ``influence_strength`` without ``influence``), so the page never lists a
    value the run did not use, and a new option of that form needs no change here."""
    off = {k for k, v in settings.items() if v is None or v is False}
    return {k: v for k, v in settings.items()
            if not any(k.startswith(f"{switch}_") for switch in off)}


def label(key: str) -> str:
    """A setting's name as the page shows it: a readable label for the keys whose Python name
    says little (``num_images``, ``lr``), else the key with spaces."""
    return LABELS.get(key, key.replace("_", " "))


def labelled(settings: dict[str, Any]) -> dict[str, Any]:
    """The scalar settings that applied, by their labels, for a table of the page."""
    return {label(k): v for k, v in applicable(settings).items()
            if isinstance(v, str | int | float) and not k.endswith("_sha256")}


def _training(folder: Path, manifests: list[dict[str, Any]], problems: list[str]) -> Training:
    """A stage's settings (the scalar options of its recipe, which are the ones that change
    its output, without those of a switch that is off) and its per-epoch records."""
    manifest = manifests[0] if manifests else {}
    recipe = manifest.get("recipe") or manifest.get("config") or {}
    settings = labelled(recipe)
    history = manifest.get("history")
    metrics = RunDir.metrics(folder)
    if metrics.is_file():  # the per-epoch file is the one written as training goes
        try:
            history = json.loads(metrics.read_text())
        except (OSError, json.JSONDecodeError):
            problems.append(f"{metrics}: unreadable")
    rows = [h for h in history or [] if isinstance(h, dict) and "epoch" in h]
    return Training(folder.name, settings, rows, manifest.get("created"))


def _evaluations(root: Path, facts: RunFacts, methods: dict[Path, Method]) -> None:
    """Attach every ``eval/*.json`` to the folder it scored. A folder scored more than once
    (on a subset of the images, say) shows the evaluation of the most images, the latest of
    those, and lists the others beside it."""
    found = [(p, m) for p in RunDir(root).eval_reports()
             if (m := _eval_report(p, facts.problems)) is not None
             and isinstance(m.get("report"), dict)]
    def fullness(item: tuple[Path, dict[str, Any]]) -> tuple[int, str]:
        images = item[1]["report"].get("images")
        return images if isinstance(images, int) else 0, str(item[1].get("created", ""))

    for path, manifest in sorted(found, key=fullness):
        report, config = manifest["report"], manifest.get("config") or {}
        origin = ran_in(path, config.get("out"))
        scored = config.get("pred") if report.get("kind") == "masks" else config.get("cams")
        step = _step("eval", f"eval/{path.name}", [manifest])
        step.counts = {"images": report.get("images", 0),
                       "failed": report.get("missing_or_failed", 0)}
        step.warnings = list(report.get("problems", []))
        facts.steps.append(step)
        if not isinstance(scored, str):
            continue
        target = _scored_folder(scored, config.get("out"), origin, root)
        kind = "masks" if report.get("kind") == "masks" else "cams"
        method = methods.setdefault(target.resolve(), Method(
            _name(target, root), kind, target, _files(target, kind) if target.is_dir() else 0))
        if report.get("kind") == "faithfulness":  # scores beside mIoU, not instead of it
            method.faithfulness = report
            continue
        if method.evaluation is not None:
            method.other_evaluations[method.eval_file] = method.evaluation
        method.evaluation, method.eval_file = report, path.name
        gt = (manifest.get("inputs") or {}).get("gt")
        if isinstance(gt, str) and recorded_path(gt, origin).is_dir():
            facts.gt = MaskFolder(recorded_path(gt, origin))
        elif isinstance(gt, str):  # drawn from a dataset's annotations: the eval's dataset
            facts.gt = _ground_truth(config.get("dataset"), origin) or facts.gt
