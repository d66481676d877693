"""``igcam eval``: score pseudo-masks or CAMs against ground-truth label maps.

Predictions are PNG label maps (``--pred``) or CAM files (``--cams``), the latter swept over
background thresholds in one pass over the files. Images listed in the split but missing from
the predictions count as all-wrong (every ground-truth pixel a miss) and are reported. The
ground truth, split and class list are given as folders and files (``--gt``, ``--split FILE``,
``--classes``) or taken from a dataset's format (``--voc ROOT``, ``--coco FILE``, whose masks
are drawn from the annotations as each image is scored), which is how ``igcam run`` evaluates.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from igcam_cli import options
from igcam_cli.artifacts import (
    RunDir,
    StepRecord,
    ensure_dir,
    jsonable,
    read_cam,
    read_manifest,
    replaceable,
    sha256_file,
    write_bytes,
)
from igcam_cli.datasets import (
    DatasetFormat,
    DatasetSpec,
    GroundTruth,
    MaskFolder,
    class_names,
    dataset_format,
    read_split,
)
from igcam_cli.errors import IgcamError, ImageProblem, print_warning
from igcam_cli.faithfulness import BETTER, SCORES, FaithfulnessOptions, Perturber
from igcam_cli.images import IGNORE, read_image, read_label_map
from igcam_cli.masks import peak_labels
from igcam_cli.metrics import confusion, missing_confusion, scores
from igcam_cli.models import load_classifier
from igcam_cli.options import option
from igcam_cli.runner import console, in_processes, resolve_device, track
from igcam_cli.transforms import to_tensor


@dataclass(frozen=True)
class EvalData(DatasetSpec):
    """eval's data options: :class:`DatasetSpec`'s, except that ``--split`` has no default and
    is a file of ids without a dataset, so ``--gt DIR`` alone still scores every prediction and
    ``--gt DIR --split FILE`` a list of ids, as before eval knew datasets."""

    split: str | None = option(
        None, f"Split name of a dataset with splits (--voc; default {DatasetSpec.split}), else a "
              "file of image ids to score; missing predictions count as all-wrong. Default: "
              "every prediction in the folder.")

    @classmethod
    def of(cls, spec: DatasetSpec) -> EvalData:
        """The data options that evaluate a step's dataset (``igcam run``)."""
        return cls(**vars(spec))

    def spec(self) -> DatasetSpec:
        """The spec the formats read, its split name defaulting as :class:`DatasetSpec`'s."""
        return DatasetSpec(**{k: v for k, v in vars(self).items()
                              if v is not None or k != "split"})


STDOUT = Path("-")
FAITH = "Faithfulness (no ground truth)"  # --out -: the JSON report on stdout, for pipelines


@dataclass
class EvalConfig:
    gt: Path | None = option(
        None, "Ground-truth label PNGs (e.g. SegmentationClass). Default: the dataset's "
              "(--voc ROOT: SegmentationClassAug/, else SegmentationClass/; --coco FILE: "
              "drawn from its annotations).")
    pred: Path | None = option(None, "Predicted label PNGs to score.")
    cams: Path | None = option(
        None, "CAM folder to score instead, sweeping the background threshold.")
    thresholds: str = option(
        "0.05:0.95:0.05", "Sweep for --cams: START:STOP:STEP (inclusive) or a comma list.")
    dataset: EvalData = options.nested(EvalData, panel=options.DATA)
    ignore_uncertain: bool = option(
        False, "Ignore predicted 255 pixels instead of counting them as wrong.")
    out: Path | None = option(None, "Write the report here (- for stdout), in --format.")
    format: str = option(
        "json", "Form of the --out report. json: the whole report with the config, versions "
                "and the threshold sweep (the eval manifest); csv: class,iou,precision,recall "
                "rows (fractions of 1) ending with mIoU; table: the printed table as text.",
        choices=("json", "csv", "table"))
    workers: int = options.workers()
    faithfulness: bool = option(
        False, "Score --cams without ground truth, by how the classifier's class probability "
               "reacts when the pixels each map ranks highest are removed or kept: deletion "
               "and insertion AUC and ROAD (most and least relevant first), averaged over "
               "every (image, class) map. Deletion and ROAD-MoRF: lower is better; insertion, "
               "ROAD-LeRF and ROAD (their combination): higher is better. The photos are read "
               "from the paths the CAM files record; the classifier is --run's (or "
               "--checkpoint), and should be the one the maps were made with.",
        panel=FAITH)
    run: Path | None = option(
        None, "Run directory whose classifier --faithfulness uses (RUN/train-cls/).",
        panel=FAITH)
    checkpoint: Path | None = option(
        None, "Classifier checkpoint for --faithfulness instead of the run's.", panel=FAITH)
    faith: FaithfulnessOptions = options.nested(FaithfulnessOptions, prefix="faith-",
                                                panel=FAITH)
    device: str = options.device()
    name: str | None = None  # the table's title (igcam run names its evaluations)


MAX_THRESHOLDS = 1000  # a sweep's confusion matrices are kept per threshold


def parse_thresholds(text: str) -> list[float]:
    """``START:STOP:STEP`` (STOP inclusive) or a comma list."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not step > 0 or (stop - start) / step > MAX_THRESHOLDS:  # not the array first
                raise ValueError
            values = np.arange(start, stop + step / 2, step)
        else:
            values = np.array([float(v) for v in text.split(",")])
        if len(values) > MAX_THRESHOLDS or not np.isfinite(values).all():
            raise ValueError
    except ValueError:
        raise IgcamError(f"--thresholds must be START:STOP:STEP or a comma list of at most "
                         f"{MAX_THRESHOLDS} finite values, got {text!r}") from None
    return [round(float(v), 6) for v in values]


_WORK: dict[str, object] = {}  # what one worker process scores with (see _start_worker)


def _start_worker(config: EvalConfig, truth: GroundTruth, n: int,
                  thresholds: list[float]) -> None:
    """Hand a worker process the evaluation once, rather than with every batch of ids: a
    ground truth drawn from annotations holds the whole annotation index."""
    _WORK.update(config=config, truth=truth, n=n, thresholds=thresholds)


def _worker_confusions(image_id: str) -> tuple[list[np.ndarray], str | None]:
    return _image_confusions(image_id, **_WORK)


def _image_confusions(image_id: str, config: EvalConfig, truth: GroundTruth, n: int,
                      thresholds: list[float]) -> tuple[list[np.ndarray], str | None]:
    """Confusion matrices of one image (one per threshold for CAMs) and a problem, if any.
    An image whose ground truth cannot be drawn (a degenerate annotation) is not scored."""
    try:
        gt = truth.read(image_id)
    except ImageProblem as problem:
        nothing = missing_confusion(np.zeros(0, np.uint8), n)  # no pixel counted
        return [nothing] * len(thresholds), f"{problem}; not scored"
    top = int(gt[gt != IGNORE].max(initial=0))
    if top >= n:
        raise IgcamError(f"{truth.where(image_id)} has class {top} but only {n - 1} classes "
                         "are known; pass --classes")
    def missing() -> list[np.ndarray]:
        return [missing_confusion(gt, n)] * len(thresholds)

    try:
        if config.cams is not None:
            path = RunDir.image_maps(config.cams, image_id)
            if not path.is_file():
                return missing(), f"{image_id}: no CAM file"
            data = read_cam(path)
            cams = data["cams"].astype(np.float32)
            classes = data["classes"].astype(np.int64)
            if cams.shape[1:] != gt.shape:
                raise ImageProblem(f"{path}: size {cams.shape[1:]} differs from ground truth "
                                   f"{gt.shape}")
            peak, best = peak_labels(cams, classes)  # once, then one comparison per threshold
            return [confusion(gt, np.where(peak > t, best, 0), n) for t in thresholds], None
        path = RunDir.image_mask(config.pred, image_id)
        if not path.is_file():
            return missing(), f"{image_id}: no prediction"
        pred = read_label_map(path)
        if pred.shape != gt.shape:
            raise ImageProblem(f"{path}: size {pred.shape} differs from ground truth {gt.shape}")
        return [confusion(gt, pred, n)], None
    except ImageProblem as problem:
        return missing(), str(problem)


def _ids(config: EvalConfig, gt: GroundTruth, fmt: DatasetFormat | None, spec: DatasetSpec
         ) -> list[str]:
    """The ids to score: the dataset's split, else ``--split FILE``, else every prediction."""
    ids = fmt.split_ids(spec) if fmt is not None else None
    if ids is None and config.dataset.split is not None:
        ids = read_split(Path(config.dataset.split))
    if ids is None:
        files = (RunDir.image_files(config.cams) if config.cams is not None
                 else RunDir.image_files(config.pred, "masks"))
        ids = [p.stem for p in files]
    if not ids:
        raise IgcamError("nothing to evaluate: the prediction folder (or split) is empty")
    absent = [i for i in ids if not gt.has(i)]
    if absent:
        raise IgcamError(f"ground truth {gt.where(absent[0])} not found "
                         f"({len(absent)} of {len(ids)} images have none)")
    return ids


def _check_classes(config: EvalConfig, names: list[str]) -> None:
    """CAMs whose classifier knew other classes than the ground truth's would be scored as
    the classes of the same numbers (person as aeroplane): refused. The CAM folder's manifest
    says which classes its ids are; folders made before it said so (and masks, whose PNGs
    carry numbers only) are taken as they are."""
    folder = config.cams
    made = read_manifest(folder) if folder is not None and folder.is_dir() else None
    theirs = ((made or {}).get("inputs") or {}).get("class_names")
    if isinstance(theirs, list) and [str(t).lower() for t in theirs] != [
            n.lower() for n in names]:
        raise IgcamError(f"{folder} holds CAMs of {len(theirs)} classes ({', '.join(theirs[:4])}"
                         f"{', ...' if len(theirs) > 4 else ''}), the ground truth has "
                         f"{len(names)} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                         "): pass the --classes (or dataset) they were made with")


def evaluate(config: EvalConfig) -> dict:
    """Score the predictions; prints a table and returns (and optionally writes) the report."""
    if (config.pred is None) == (config.cams is None):
        raise IgcamError("give exactly one of --pred DIR or --cams DIR")
    if config.faithfulness:
        return faithfulness(config)
    spec = config.dataset.spec()
    fmt = dataset_format(spec)
    for folder in (config.gt, config.pred or config.cams):
        if folder is not None and not folder.is_dir():
            raise IgcamError(f"{folder} is not a directory")
    if config.out is not None and config.out != STDOUT:
        replaceable(config.out)  # before the work, not after it
    gt = (MaskFolder(config.gt) if config.gt is not None
          else fmt.ground_truth(spec) if fmt is not None else None)
    if gt is None:
        raise IgcamError("no ground truth: give --gt DIR, or a dataset with ground-truth masks "
                         "(e.g. --voc ROOT with SegmentationClass/, or --coco FILE)")
    names = ["background", *class_names(spec)]
    n = len(names)
    _check_classes(config, names[1:])
    thresholds = parse_thresholds(config.thresholds) if config.cams is not None else [0.0]
    ids = _ids(config, gt, fmt, spec)
    total = [np.zeros((n, n + 2), dtype=np.int64) for _ in thresholds]
    problems: list[str] = []
    if config.workers > 1:
        results = in_processes(_worker_confusions, ids, config.workers, _start_worker,
                               (config, gt, n, thresholds))
    else:
        one = functools.partial(_image_confusions, config=config, truth=gt, n=n,
                                thresholds=thresholds)
        results = (one(image_id) for image_id in ids)
    with contextlib.closing(results), contextlib.closing(track(results, len(ids), "eval")) \
            as tracked:
        for matrices, problem in tracked:
            for acc, matrix in zip(total, matrices, strict=True):
                acc += matrix
            if problem:
                problems.append(problem)
    sweep = [scores(m, config.ignore_uncertain).miou for m in total]
    best = int(np.argmax(sweep))
    result = scores(total[best], config.ignore_uncertain)
    report = {
        "kind": "cams" if config.cams is not None else "masks",
        "images": len(ids), "missing_or_failed": len(problems), "problems": problems[:50],
        "ignore_uncertain": config.ignore_uncertain, **result.as_dict(names),
    }
    if config.cams is not None:
        report["threshold"] = thresholds[best]
        report["sweep"] = {str(t): round(m, 6) for t, m in zip(thresholds, sweep, strict=True)}
    table = _table(report, names, result.valid, config)
    _print(report, table)
    _write(config, {"gt": gt.describe()}, report, lambda: _csv(report, names, result.valid),
           table)
    return report


def _write(config: EvalConfig, inputs: dict, report: dict, csv_text: Callable[[], str],
           table: Table) -> None:
    """Write the report to ``--out`` in ``--format``. The JSON report is the eval step's
    manifest: config, inputs, versions and scores in one file."""
    if config.out is None:
        return
    record = StepRecord("eval", jsonable(asdict(config)))
    record.inputs = inputs
    record.extra = {"report": report}
    text = (json.dumps(record.document(), indent=2, sort_keys=True) + "\n"
            if config.format == "json" else csv_text() if config.format == "csv"
            else _plain(table))
    if config.out == STDOUT:
        sys.stdout.write(text)
    else:
        write_bytes(ensure_dir(config.out.parent) / config.out.name, text.encode("utf-8"))


def faithfulness(config: EvalConfig) -> dict:
    """``--faithfulness``: the :mod:`igcam_cli.faithfulness` scores of a CAM folder, from the
    classifier and the photos the CAM files name; no ground truth is read."""
    if config.cams is None:
        raise IgcamError("--faithfulness scores CAMs: give --cams DIR (not --pred)")
    if not config.cams.is_dir():
        raise IgcamError(f"{config.cams} is not a directory")
    if config.run is None and config.checkpoint is None:
        raise IgcamError("--faithfulness needs the classifier: give --run RUN or --checkpoint "
                         "FILE")
    try:
        perturber_options = config.faith
        perturber_options.fractions()
    except ValueError as problem:
        raise IgcamError(str(problem)) from None
    if config.out is not None and config.out != STDOUT:
        replaceable(config.out)
    checkpoint = config.checkpoint or RunDir(config.run).classifier()
    if not checkpoint.is_file():
        raise IgcamError(f"no classifier at {checkpoint}: run `igcam train-cls` first or give "
                         "--checkpoint FILE")
    device = resolve_device(config.device)
    model, payload = load_classifier(checkpoint, device)
    names = list(payload["class_names"])
    made = read_manifest(config.cams) or {}
    made_with = (made.get("inputs") or {}).get("checkpoint_sha256")
    digest = sha256_file(checkpoint)
    if made_with and made_with != digest:
        print_warning(f"{config.cams} was made with another classifier than {checkpoint}: the "
                      "scores say how faithful its maps are to this one")
    ids = (read_split(Path(config.dataset.split)) if config.dataset.split is not None
           else [p.stem for p in RunDir.image_files(config.cams)])
    if not ids:
        raise IgcamError(f"nothing to score: {config.cams} holds no CAM file")
    perturber = Perturber(model, perturber_options)
    rows: list[tuple[int, dict[str, float]]] = []  # (class id, scores) per map
    problems: list[str] = []
    for number, image_id in enumerate(track(ids, len(ids), "faithfulness")):
        try:
            path = RunDir.image_maps(config.cams, image_id)
            if not path.is_file():
                raise ImageProblem(f"{image_id}: no CAM file")
            data = read_cam(path, full_size=False)
            image = to_tensor(read_image(Path(str(data["image"])), perturber_options.max_side))
            classes = [int(c) for c in data["classes"]]
            if max(classes, default=0) >= len(names):
                raise ImageProblem(f"{path}: class ids {classes} beyond the classifier's "
                                   f"{len(names)} classes")
            maps = torch.from_numpy(data["cams"].astype(np.float32)).to(device)
            found = perturber.scores(image.to(device), maps, classes, seed=number)
            rows.extend(zip(classes, found, strict=True))
        except (ImageProblem, IgcamError) as problem:
            problems.append(str(problem))
    if not rows:
        raise IgcamError(f"no map of {config.cams} could be scored"
                         + (f", e.g. {problems[0]}" if problems else ""))
    per_class = {names[c]: {s: float(np.mean([r[s] for k, r in rows if k == c]))
                            for s in SCORES} for c in sorted({k for k, _ in rows})}
    report = {"kind": "faithfulness", "images": len(ids), "maps": len(rows),
              "missing_or_failed": len(problems), "problems": problems[:50],
              "scores": {s: float(np.mean([r[s] for _, r in rows])) for s in SCORES},
              "per_class": per_class, "better": BETTER}
    table = _faith_table(report, config)
    console.print(table)
    if problems:
        print_warning(f"{len(problems)} of {len(ids)} images were not scored, e.g. "
                      f"{problems[0]}")
    _write(config, {"checkpoint": str(checkpoint), "checkpoint_sha256": digest},
           report, lambda: _faith_csv(report), table)
    return report


def _faith_table(report: dict, config: EvalConfig) -> Table:
    table = Table(title=f"{config.name or config.cams}  (faithfulness, {report['maps']} maps)",
                  title_justify="left")
    table.add_column("class")
    for score in SCORES:
        arrow = "\u2191" if BETTER[score] > 0 else "\u2193"
        table.add_column(f"{score.replace('_', '-')} {arrow}", justify="right")
    for name, values in report["per_class"].items():
        table.add_row(name, *(f"{values[s]:.3f}" for s in SCORES))
    table.add_row("mean", *(f"{report['scores'][s]:.3f}" for s in SCORES), style="bold")
    return table


def _faith_csv(report: dict) -> str:
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["class", *SCORES])
    for name, values in [*report["per_class"].items(), ("mean", report["scores"])]:
        rows.writerow([name, *(f"{values[s]:.6f}" for s in SCORES)])
    return text.getvalue()


def _table(report: dict, names: list[str], valid: np.ndarray, config: EvalConfig) -> Table:
    title = config.name or str(config.pred or config.cams)
    if "threshold" in report:
        title += f"  (best background threshold {report['threshold']:.2f})"
    table = Table(title=title, title_justify="left")
    for column in ("class", "IoU", "precision", "recall"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, ok in zip(names, valid, strict=True):
        if ok:
            table.add_row(name, *(f"{100 * report[k][name]:.1f}"
                                  for k in ("iou", "precision", "recall")))
    table.add_row("mIoU", f"{100 * report['miou']:.1f}", "", "", style="bold")
    return table


def _csv(report: dict, names: list[str], valid: np.ndarray) -> str:
    """The scores of the classes present (as the table shows them), then the mean."""
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\n")
    rows.writerow(["class", "iou", "precision", "recall"])
    for name, ok in zip(names, valid, strict=True):
        if ok:
            rows.writerow([name, *(f"{report[k][name]:.6f}"
                                   for k in ("iou", "precision", "recall"))])
    rows.writerow(["mIoU", f"{report['miou']:.6f}", "", ""])
    return text.getvalue()


def _plain(table: Table) -> str:
    """The table as text without colours, as wide as it needs."""
    out = Console(file=io.StringIO(), width=200, color_system=None, markup=False)
    out.print(table)
    return "\n".join(line.rstrip() for line in out.file.getvalue().splitlines()) + "\n"


def _print(report: dict, table: Table) -> None:
    console.print(table)
    if report["missing_or_failed"]:
        print_warning(f"{report['missing_or_failed']} of {report['images']} images had "
                      f"no usable prediction and count as all-wrong, e.g. {report['problems'][0]}")
    if "sweep" in report:
        console.print("threshold sweep: " + ", ".join(
            f"{t}: {100 * m:.1f}" for t, m in report["sweep"].items()))
