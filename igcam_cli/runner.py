"""What every step shares: the device, progress bars, reading images, the per-image loop."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from igcam_cli import options
from igcam_cli.artifacts import (
    RunDir,
    Shard,
    StepRecord,
    ensure_dir,
    jsonable,
    merge_finished_shards,
    read_manifest,
    remove_stale_temps,
)
from igcam_cli.datasets import DatasetSpec, Sample
from igcam_cli.distributed import device_name
from igcam_cli.errors import IgcamError, ImageProblem, console
from igcam_cli.images import read_image

T = TypeVar("T")


def progress_bar(*extra_columns: TextColumn, disable: bool = False) -> Progress:
    """A rich progress bar on stderr, so stdout stays clean for pipelines.

    Off a terminal (cluster logs) rich draws nothing while running and one final line at the
    end, so logs get a summary rather than thousands of redraws. ``disable`` hides it (the
    torchrun processes of one training other than rank 0).
    """
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra_columns, TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=disable)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        try:
            for item in items:
                yield item
                bar.advance(task)
        except BaseException:  # a stopped step ends on its error line alone, not a half bar
            bar.update(task, visible=False)
            raise


@dataclass
class DataStepConfig:
    """The options of every step that reads a dataset into a run directory."""

    run: Path = options.run_dir()
    dataset: DatasetSpec = options.nested(DatasetSpec)


@dataclass
class ClassifierStepConfig(DataStepConfig):
    """... and reads a trained classifier too (``cam``, ``influence``)."""

    checkpoint: Path | None = options.checkpoint()

    def classifier(self) -> Path:
        """``--checkpoint``, else the run's stage-1 classifier."""
        return self.checkpoint or RunDir(self.run).classifier()


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a missing GPU is a user
    error rather than torch's traceback at the first tensor moved there. Under torchrun,
    ``auto`` and ``cuda`` are the process's own GPU (``distributed.device_name``)."""
    name = device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise IgcamError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise IgcamError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise IgcamError(f"--device {name} requested but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise IgcamError(f"--device {name}: torch sees only {torch.cuda.device_count()} "
                             "CUDA device(s), numbered from 0")
    return device


def warn(record: StepRecord, problem: ImageProblem | str, strict: bool) -> None:
    """A per-image problem: fatal under ``--strict``, else counted, kept and shown."""
    if strict:
        raise problem if isinstance(problem, ImageProblem) else ImageProblem(problem)
    record.count("failed")
    record.warn(str(problem))
    console.print(f"[yellow]warning:[/] {problem}")


def record_problems(record: StepRecord, problems: list[str]) -> None:
    """The dataset's per-image problems (found while listing it): failures, kept and shown."""
    for problem in problems:
        record.warn(problem)
        console.print(f"[yellow]warning:[/] {problem}")
    record.count("failed", len(problems))


def summarise_warnings(record: StepRecord, manifest: Path, shown: int = 3) -> None:
    """After a step's summary line: its first warnings and where all of them are, so that
    "N failed" never stands without a reason on the terminal."""
    for warning in record.warnings[:shown]:
        console.print(f"  [yellow]warning:[/] {warning}")
    if len(record.warnings) > shown:
        console.print(f"  ... {len(record.warnings)} warnings in all, listed in {manifest}")


def readable(samples: Iterable[Sample], record: StepRecord, strict: bool
             ) -> Iterator[tuple[Sample, np.ndarray]]:
    """Each sample with its decoded image; an unreadable one goes through :func:`warn`."""
    for sample in samples:
        try:
            image = read_image(sample.image)
        except ImageProblem as problem:
            warn(record, problem, strict)
            continue
        yield sample, image


def _guarded(job: tuple[Callable[[Sample], None], Sample]) -> str | None:
    """Run one image; a per-image problem comes back as its message instead of raising."""
    fn, sample = job
    try:
        fn(sample)
    except ImageProblem as problem:
        return str(problem)
    return None


def run_per_image(samples: list[Sample], fn: Callable[[Sample], None],
                  output: Callable[[Sample], Path], record: StepRecord, *,
                  overwrite: bool, strict: bool, workers: int, description: str) -> None:
    """Apply ``fn`` to every sample whose ``output`` file is missing (or all with overwrite).

    ``fn`` writes its own artifact atomically. With ``workers > 1`` it runs in a process pool,
    so it must be picklable (a module-level function or a ``functools.partial`` of one).
    """
    todo = [s for s in samples if overwrite or not output(s).exists()]
    record.count("skipped_done", len(samples) - len(todo))
    jobs = [(fn, s) for s in todo]
    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            outcomes: Iterable[str | None] = pool.imap_unordered(_guarded, jobs, chunksize=1)
            _collect(outcomes, len(jobs), record, strict, description)
    else:
        _collect(map(_guarded, jobs), len(jobs), record, strict, description)


def _collect(outcomes: Iterable[str | None], total: int, record: StepRecord, strict: bool,
             description: str) -> None:
    for message in track(outcomes, total, description):
        if message is None:
            record.count("processed")
        else:
            warn(record, message, strict)


# Options that change how a step runs but not what it writes.
NO_OUTPUT_EFFECT = frozenset({"run", "out", "overwrite", "shard", "strict", "workers", "device"})


def recipe_of(record: StepRecord, also_exempt: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What a step's outputs depend on: its config without the options that change none of
    them, and the hashes of its inputs (the classifier)."""
    recipe = {k: v for k, v in record.config.items() if k not in NO_OUTPUT_EFFECT | also_exempt}
    recipe.update({k: v for k, v in record.inputs.items() if k.endswith("sha256")})
    return recipe


def trained_already(name: str, final: Path, record: StepRecord) -> bool:
    """Whether a training step's ``final`` file exists, made with ``record``'s recipe; made
    with another, the step refuses rather than skip to a network that the options do not
    describe."""
    if not final.exists():
        return False
    made = (read_manifest(final.parent) or {}).get("recipe")
    differs = recipe_differences(record.extra["recipe"], made) if made is not None else []
    if differs:
        raise IgcamError(f"{final} was trained with another {', '.join(differs)}: use "
                         "another --run, or delete that folder to retrain")
    console.print(f"{name}: {final} exists, skipping (delete it to retrain)")
    return True


def recipe_differences(recipe: dict[str, Any], other: dict[str, Any],
                       prefix: str = "") -> list[str]:
    """The keys on which two recipes disagree (``dataset.split`` inside a nested one). A key
    one recipe lacks counts as None there: an option added since a manifest was written
    (``dataset.coco``) leaves the folders made without it valid while it is not given."""
    differs = []
    for key in recipe.keys() | other.keys():
        mine, theirs = recipe.get(key), other.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            differs += recipe_differences(mine, theirs, f"{prefix}{key}.")
        elif mine != theirs:
            differs.append(prefix + key)
    return sorted(differs)


class ImageStep:
    """The prologue and epilogue of a per-image step, so that a step keeps only its one image.

    Prologue (the step parses ``--shard`` first, so a bad one fails before any work): create
    the output folder (checking it is writable), remove the
    temporary files a killed run left, start the manifest record with the config. Then
    :meth:`run` the per-image function over the shard's samples (finished outputs skipped,
    per-image problems warned and counted), and :meth:`finish` writes the manifest (one per
    shard) and the one-line summary. ``propose``, ``cam``, ``refine`` and ``influence``'s maps
    go through here, which is also where prefetching, background writes and rank-aware
    sharding belong.
    """

    def __init__(self, name: str, out: Path, config: Any, shard: Shard) -> None:
        self.name = name
        self.shard = shard
        self.out = ensure_dir(out)
        remove_stale_temps(self.out)
        self.record = StepRecord(name, jsonable(asdict(config)))

    def problems(self, problems: list[str]) -> None:
        """Record the dataset's per-image problems (found while listing it) as failures."""
        record_problems(self.record, problems)

    def select(self, samples: list[Sample]) -> list[Sample]:
        return self.shard.select(samples)

    def check_recipe(self, overwrite: bool) -> None:
        """Refuse to mix outputs made with other options (or inputs) in one folder.

        The recipe is the config without the options that change no output, plus the hashes
        of the inputs (the classifier); it goes into the manifest. A folder whose manifests
        name another recipe is redone under ``--overwrite`` (their manifests removed), else
        refused: skipping its files as "already done" would make the manifest describe files
        that were made otherwise.
        """
        if "recipe" in self.record.extra:
            return
        recipe = self.record.extra["recipe"] = recipe_of(self.record)
        made = {path: json.loads(path.read_text()).get("recipe")
                for path in self.out.glob("manifest*.json")}
        differs = sorted({key for other in made.values() if other is not None
                          for key in recipe_differences(recipe, other)})
        if not differs:
            return
        if not overwrite:
            raise IgcamError(f"{self.out} holds {self.name} outputs made with another "
                             f"{', '.join(differs)}: pass --overwrite to redo them, or another "
                             "--out")
        for path, other in made.items():
            if other is not None and other != recipe:
                path.unlink(missing_ok=True)

    def run(self, samples: list[Sample], fn: Callable[[Sample], None],
            output: Callable[[Sample], Path], *, overwrite: bool, strict: bool,
            workers: int = 1, description: str | None = None) -> None:
        self.check_recipe(overwrite)
        run_per_image(samples, fn, output, self.record, overwrite=overwrite, strict=strict,
                      workers=workers, description=description or self.name)

    def finish(self, written: str = "written", extra: str = "") -> Path:
        """Save the manifest and print ``NAME: N written, M already done, K failed -> OUT``.

        The last shard of a split to finish merges the shards' manifests into one
        ``manifest.json`` (``artifacts.merge_shards``); if they cannot be merged, the shard's
        own work still stands and the reason is a warning.
        """
        manifest = self.record.save(self.out, self.shard)
        counts = self.record.counts
        console.print(f"{self.name}: {counts.get('processed', 0)} {written}, "
                      f"{counts.get('skipped_done', 0)} already done, "
                      f"{counts.get('failed', 0)} failed{extra} -> {self.out}")
        summarise_warnings(self.record, manifest)
        if not self.shard.is_whole:
            try:
                merged = merge_finished_shards(self.out, self.shard.count)
            except IgcamError as error:
                console.print(f"[yellow]warning:[/] shards not merged: {error}")
            else:
                if merged is not None:
                    console.print(f"{self.name}: all {self.shard.count} shards done -> {merged}")
        return self.out
