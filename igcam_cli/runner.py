"""What every step shares: the device, progress bars, reading images, the per-image loop."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from igcam_cli import options
from igcam_cli.artifacts import (
    Claim,
    RunDir,
    Shard,
    StepRecord,
    ensure_dir,
    jsonable,
    merge_finished_shards,
    option_defaults,
    read_manifest,
    recipe_differences,
    recipe_of,
    recipes,
    remove_stale_temps,
)
from igcam_cli.datasets import DatasetSpec, Sample
from igcam_cli.distributed import device_name
from igcam_cli.errors import IgcamError, ImageProblem, console, print_warning
from igcam_cli.images import read_image

T = TypeVar("T")
L = TypeVar("L")  # what an ImageWork loads
R = TypeVar("R")  # what it computes


def progress_bar(*extra_columns: TextColumn, disable: bool = False) -> Progress:
    """Progress on stderr, so stdout stays clean for pipelines: rich's bars on a terminal;
    elsewhere (``> log 2>&1``, Slurm, nohup) :class:`LogLines`, so that ``tail -f`` shows a
    live job. ``disable`` hides it (the torchrun processes of one training but rank 0)."""
    if not disable and not console.is_terminal:
        return LogLines(interval=float(os.environ.get("IGCAM_LOG_SECONDS", LOG_SECONDS)))
    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                    MofNCompleteColumn(), *extra_columns, TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=disable)


LOG_SECONDS = 30.0  # between two progress lines in a log ($IGCAM_LOG_SECONDS)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class LogLines(Progress):
    """Progress as plain lines, for a log: one every ``interval`` seconds while a task runs
    and one when it ends (none for a task hidden on an error), each with the count, the rate,
    the time left and the task's number fields (the training loss)."""

    def __init__(self, interval: float) -> None:
        super().__init__(console=console, disable=True, auto_refresh=False)
        self.interval = interval
        self._logged: dict[TaskID, float] = {}

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0,
                 completed: int = 0, visible: bool = True, **fields: Any) -> TaskID:
        task = super().add_task(description, start, total, completed, visible, **fields)
        self._logged[task] = time.monotonic()
        return task

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        if time.monotonic() - self._logged[task_id] >= self.interval:
            self._line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def stop(self) -> None:
        for task in self.tasks:
            if task.visible:
                self._line(task.id)
        super().stop()

    def _line(self, task_id: TaskID) -> None:
        self._logged[task_id] = time.monotonic()
        task = self._tasks[task_id]
        done = f"{task.completed:g}/{task.total:g}" if task.total else f"{task.completed:g}"
        share = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        rate = f", {task.speed:.2f}/s" if task.speed else ""
        extra = "".join(f", {name} {value:.4f}" for name, value in task.fields.items()
                        if isinstance(value, float))
        console.print(f"{task.description}: {done}{share}, {_clock(task.elapsed)} elapsed"
                      f"{rate}, {_clock(task.time_remaining)} left{extra}", highlight=False)


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
    dataset: DatasetSpec = options.nested(DatasetSpec, panel=options.DATA)


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
    print_warning(problem)


def record_problems(record: StepRecord, problems: list[str]) -> None:
    """The dataset's per-image problems (found while listing it): failures, kept and shown."""
    for problem in problems:
        record.warn(problem)
        print_warning(problem)
    record.count("failed", len(problems))


def summarise_warnings(record: StepRecord, manifest: Path, shown: int = 3) -> None:
    """After a step's summary line: its first warnings and where all of them are, so that
    "N failed" never stands without a reason on the terminal."""
    for warning in record.warnings[:shown]:
        print_warning(warning, indent="  ")
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


@dataclass(frozen=True)
class ImageWork(Generic[L, R]):
    """One image's work in three parts, so that the runner can overlap them across images.

    ``load`` decodes (CPU: on a prefetch thread, images ahead of the network), ``compute``
    does the image's work (on the main thread, in image order: the network and anything that
    must not run twice at once) and ``write`` saves its result (compression and file I/O: on
    a writer thread, behind the network). An :class:`ImageProblem` from any part, or an
    ``OSError`` from ``write``, is that image's problem. With ``--workers`` processes the
    three run in a row in a worker, so there they must be picklable (module-level functions,
    their partials, or methods of a picklable object).
    """

    load: Callable[[Sample], L]
    compute: Callable[[Sample, L], R]
    write: Callable[[Sample, R], None]
    # Optional: several consecutive images whose ``group`` keys are equal (e.g. their size)
    # computed at once, at most ``batch`` of them, as ``compute`` would one by one. Used by the
    # overlapped runner; an ImageProblem from a batch is found again image by image.
    compute_batch: Callable[[list[Sample], list[L]], list[R]] | None = None
    group: Callable[[L], Hashable] | None = None
    batch: int = 1

    def batches(self) -> bool:
        return self.batch > 1 and self.compute_batch is not None and self.group is not None


def read_sample(sample: Sample) -> np.ndarray:
    """The ``load`` of steps that want the decoded photo (RGB uint8) and nothing else."""
    return read_image(sample.image)


def _written(work: ImageWork, sample: Sample, result: Any) -> str | None:
    """Write one result; a problem comes back as its message (an OSError, a full disk or a
    vanished folder, is that image's failure: warned, or fatal under --strict)."""
    try:
        work.write(sample, result)
    except ImageProblem as problem:
        return str(problem)
    except OSError as exc:
        return f"{sample.image}: output not written ({exc.strerror or exc})"
    return None


def _guarded(job: tuple[ImageWork, Sample]) -> str | None:
    """Run one image's three parts in a row; a per-image problem comes back as its message."""
    work, sample = job
    try:
        result = work.compute(sample, work.load(sample))
    except ImageProblem as problem:
        return str(problem)
    return _written(work, sample, result)


# A --workers process's work, unpickled once when the process starts rather than with every
# image, so that what its parts set up (a refine chain's stages) is set up once per process.
_PROCESS_WORK: ImageWork | None = None


def _install(work: ImageWork) -> None:
    global _PROCESS_WORK
    _PROCESS_WORK = work


def _in_worker(sample: Sample) -> str | None:
    assert _PROCESS_WORK is not None, "the pool's initializer installs the work"
    return _guarded((_PROCESS_WORK, sample))


def _outcome(entry: Future | str) -> str | None:
    """A finished image's message (None: written); a writer's unexpected error raises here."""
    return entry if isinstance(entry, str) else entry.result()


def _computed(work: ImageWork, group: list[tuple[Sample, Any]]) -> list[Any]:
    """The results (or problem messages) of consecutive loaded images, batched if they are
    several; a problem in a batch is found again image by image, so it stays that image's."""
    if len(group) > 1:
        assert work.compute_batch is not None
        try:
            return list(work.compute_batch([s for s, _ in group], [x for _, x in group]))
        except ImageProblem:
            pass
    results = []
    for sample, loaded in group:
        try:
            results.append(work.compute(sample, loaded))
        except ImageProblem as problem:
            results.append(problem)
    return results


def _overlapped(todo: list[Sample], work: ImageWork, io_workers: int) -> Iterator[str | None]:
    """Each image's outcome, in image order, with loads ahead and writes behind ``compute``.

    ``io_workers`` threads decode at most ``2 * io_workers`` images ahead (at least two
    batches) and as many write results behind, so memory does not grow with the number of
    images; decoding, zlib and file I/O release the GIL, so they run beside the main thread's
    network. With ``work.batches()``, consecutive images of one group go to ``compute_batch``
    together. On any exception (a fatal problem, Ctrl-C, a bug) or when the consumer stops,
    loads and writes not yet started are dropped and running ones finish: every output is
    whole (atomic writes), no thread outlives the step, and the images not written are redone
    by the next run.
    """
    batch = work.batch if work.batches() else 1
    depth = max(2 * io_workers, 2 * batch)
    loaders = ThreadPoolExecutor(io_workers, thread_name_prefix="igcam-load")
    writers = ThreadPoolExecutor(io_workers, thread_name_prefix="igcam-write")
    queued = iter(todo)
    loading: deque[tuple[Sample, Future]] = deque()
    writing: deque[Future | str] = deque()  # a message: the image failed before its write

    def load_ahead() -> None:
        for sample in itertools.islice(queued, depth - len(loading)):
            loading.append((sample, loaders.submit(work.load, sample)))

    def next_group() -> list[tuple[Sample, Any]]:
        """The next loaded image and those after it of its group, up to the batch size; an
        image whose load failed comes alone, as its ImageProblem."""
        sample, loaded = loading.popleft()
        load_ahead()
        try:
            group = [(sample, loaded.result())]
        except ImageProblem as problem:
            return [(sample, problem)]
        while len(group) < batch and loading:
            following, future = loading[0]
            try:
                if work.group(future.result()) != work.group(group[0][1]):  # type: ignore[misc]
                    break
            except ImageProblem:
                break
            loading.popleft()
            load_ahead()
            group.append((following, future.result()))
        return group

    try:
        load_ahead()
        while loading:
            group = next_group()
            failed = [(s, x) for s, x in group if isinstance(x, ImageProblem)]
            results = [x for _, x in failed] or _computed(work, group)
            for (sample, _), result in zip(group, results, strict=True):
                if isinstance(result, ImageProblem):
                    writing.append(str(result))
                else:
                    writing.append(writers.submit(_written, work, sample, result))
            while writing and (len(writing) > depth or isinstance(writing[0], str)
                               or writing[0].done()):
                yield _outcome(writing.popleft())
        while writing:
            yield _outcome(writing.popleft())
    finally:
        loaders.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)


def in_processes(function: Callable[[T], R], items: Iterable[T], workers: int,
                 initializer: Callable[..., None], initargs: tuple[Any, ...],
                 ordered: bool = True) -> Iterator[R]:
    """``function`` over ``items`` in ``workers`` spawned processes, each set up once by
    ``initializer(*initargs)``; results in ``items``' order, or as they finish.

    A worker that dies (a crash inside a native library, the out-of-memory killer) is one
    ``IgcamError``, where a ``multiprocessing.Pool`` would wait for it forever. Stopping early
    (an error, ``--strict``) cancels the items not yet started.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer,
                             initargs=initargs) as pool:
        try:
            futures = [pool.submit(function, item) for item in items]
            for future in futures if ordered else as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise IgcamError("a worker process died (a crash in a native library, or out of "
                             "memory); rerun with --workers 1 to see which image") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def run_per_image(samples: list[Sample], work: ImageWork, output: Callable[[Sample], Path],
                  record: StepRecord, *, overwrite: bool, strict: bool, workers: int,
                  io_workers: int, description: str) -> None:
    """Run ``work`` on every sample whose ``output`` file is missing (or all with overwrite).

    ``work.write`` writes its artifact atomically. With ``workers > 1`` each image runs in a
    spawned process (CPU-bound work in Python: DenseCRF, selective search); else loads and
    writes overlap the main thread's ``compute`` on ``io_workers`` threads (0: everything on
    the main thread, one image after the other). Outcomes are counted in image order.
    """
    todo = [s for s in samples if overwrite or not output(s).exists()]
    record.count("skipped_done", len(samples) - len(todo))
    if workers > 1 and len(todo) > 1:
        outcomes = in_processes(_in_worker, todo, workers, _install, (work,), ordered=False)
        with contextlib.closing(outcomes):
            _collect(outcomes, len(todo), record, strict, description)
    elif io_workers > 0:
        with contextlib.closing(_overlapped(todo, work, io_workers)) as overlapped:
            _collect(overlapped, len(todo), record, strict, description)
    else:
        _collect((_guarded((work, s)) for s in todo), len(todo), record, strict, description)


def _collect(outcomes: Iterable[str | None], total: int, record: StepRecord, strict: bool,
             description: str) -> None:
    # Closed at once on an error, so the progress bar's refresh thread stops with the step.
    with contextlib.closing(track(outcomes, total, description)) as tracked:
        for message in tracked:
            if message is None:
                record.count("processed")
            else:
                warn(record, message, strict)


def finite_loss(loss: torch.Tensor, step: str, epoch: int) -> torch.Tensor:
    """``loss``, unless it is NaN or infinite: then training stops with one line, since every
    later step would only carry NaN weights on (NaN CAMs, empty masks). The checkpoints of the
    epochs before stay, so ``--resume`` with a lower ``--lr`` goes on from the last."""
    if not torch.isfinite(loss.detach()).all():
        raise IgcamError(f"{step}: the loss became {loss.item()} in epoch {epoch}; training "
                         "stopped (lower --lr; checkpoints of finished epochs are kept)")
    return loss


@contextlib.contextmanager
def training_claim(out: Path, step: str, wait: bool, holds: bool = True) -> Iterator[None]:
    """One training per folder at a time: the claim on ``out`` (see ``artifacts.Claim``)
    while the body runs, removed when it ends, let go when it fails. ``holds`` False for the
    processes of a torchrun group other than rank 0, which holds it for all of them."""
    claim = Claim(out, Shard(), step, wait) if holds else None
    try:
        yield
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    if claim is not None:
        claim.done()


def trained_already(name: str, final: Path, record: StepRecord, config_type: type) -> bool:
    """Whether a training step's ``final`` file exists, made with ``record``'s recipe; made
    with another, the step refuses rather than skip to a network that the options do not
    describe. ``config_type`` is the step's config class, whose defaults stand in for the
    options an older manifest lacks."""
    if not final.exists():
        return False
    made = (read_manifest(final.parent) or {}).get("recipe")
    differs = (recipe_differences(record.extra["recipe"], made, option_defaults(config_type))
               if made is not None else [])
    if differs:
        raise IgcamError(f"{final} was trained with another {', '.join(differs)}: use "
                         "another --run, or delete that folder to retrain")
    console.print(f"{name}: {final} exists, skipping (delete it to retrain)")
    return True


class ImageStep:
    """The prologue and epilogue of a per-image step, so that a step keeps only its one image.

    Prologue (the step parses ``--shard`` first, so a bad one fails before any work): create
    the output folder (checking it is writable), remove the
    temporary files a killed run left, start the manifest record with the config. Then
    :meth:`run` the step's :class:`ImageWork` over the shard's samples (finished outputs
    skipped, decoding ahead and writing behind the main thread, per-image problems warned and
    counted), and :meth:`finish` writes the manifest (one per shard) and the one-line summary.
    ``propose``, ``cam``, ``refine`` and ``influence``'s maps go through here.
    """

    def __init__(self, name: str, out: Path, config: Any, shard: Shard,
                 wait: bool = False) -> None:
        self.name = name
        self.wait = wait  # for another process writing the folder, rather than stop
        self.shard = shard
        self.out = ensure_dir(out)
        remove_stale_temps(self.out)
        self.record = StepRecord(name, jsonable(asdict(config)))
        self.defaults = option_defaults(type(config))
        self.claim: Claim | None = None
        self.redo = False  # the folder held another recipe's outputs: this shard's go first

    def problems(self, problems: list[str]) -> None:
        """Record the dataset's per-image problems (found while listing it) as failures."""
        record_problems(self.record, problems)

    def select(self, samples: list[Sample]) -> list[Sample]:
        return self.shard.select(samples)

    def check_recipe(self, overwrite: bool) -> None:
        """Claim the folder, then refuse to mix outputs made with other options in it.

        The recipe is the config without the options that change no output, plus the hashes
        of the inputs (the classifier); it goes into the manifest. The claim
        (``artifacts.Claim``) keeps a second writer out and records this run's recipe before
        any file is removed or written, so a stopped run's recipe counts as the folder's too.
        A folder made with another recipe is redone under ``--overwrite`` (the other
        manifests and stopped claims removed), else refused: skipping its files as "already
        done" would make the manifest describe files that were made otherwise.
        """
        if self.claim is not None:
            return
        self.claim = Claim(self.out, self.shard, self.name, self.wait)
        recipe = self.record.extra["recipe"] = recipe_of(self.record)
        made = recipes(self.out)
        differs = sorted({key for other in made.values() if other is not None
                          for key in recipe_differences(recipe, other, self.defaults)})
        if differs and not overwrite:
            self.claim.release()
            self.claim = None
            raise IgcamError(f"{self.out} holds {self.name} outputs made with another "
                             f"{', '.join(differs)}: pass --overwrite to redo them, or another "
                             "--out")
        self.redo = bool(differs) or bool((self.claim.previous or {}).get("clearing"))
        self.claim.mark(recipe, clearing=self.redo)
        for path, other in made.items():
            if other is not None and other != recipe and path != self.claim.path:
                path.unlink(missing_ok=True)

    def __del__(self) -> None:  # a step that stopped between its claim and finish()
        if getattr(self, "claim", None) is not None:
            self.claim.release()

    def run(self, samples: list[Sample], work: ImageWork, output: Callable[[Sample], Path], *,
            overwrite: bool, strict: bool, workers: int = 1,
            io_workers: int = options.DEFAULT_IO_WORKERS, description: str | None = None
            ) -> None:
        """:func:`run_per_image` over the shard's ``samples``, after the recipe check."""
        self.check_recipe(overwrite)
        try:
            if self.redo:  # no file of the other recipe may pass for done if this run stops
                assert self.claim is not None, "check_recipe claimed the folder"
                for sample in samples:
                    output(sample).unlink(missing_ok=True)
                self.claim.mark(self.record.extra["recipe"])
            run_per_image(samples, work, output, self.record, overwrite=overwrite,
                          strict=strict, workers=workers, io_workers=io_workers,
                          description=description or self.name)
        except BaseException:  # the recipe stays in the claim: the folder is unfinished
            if self.claim is not None:
                self.claim.release()
                self.claim = None
            raise

    def finish(self, written: str = "written", extra: str = "") -> Path:
        """Save the manifest and print ``NAME: N written, M already done, K failed -> OUT``.

        The last shard of a split to finish merges the shards' manifests into one
        ``manifest.json`` (``artifacts.merge_shards``); if they cannot be merged, the shard's
        own work still stands and the reason is a warning.
        """
        manifest = self.record.save_work(self.out, self.shard)
        if self.claim is not None:
            self.claim.done()
            self.claim = None
        counts = self.record.counts
        console.print(f"{self.name}: {counts.get('processed', 0)} {written}, "
                      f"{counts.get('skipped_done', 0)} already done, "
                      f"{counts.get('failed', 0)} failed{extra} -> {self.out}")
        summarise_warnings(self.record, manifest)
        if not self.shard.is_whole:
            try:
                merged = merge_finished_shards(self.out, self.shard.count)
            except IgcamError as error:
                print_warning(f"shards not merged: {error}")
            else:
                if merged is not None:
                    console.print(f"{self.name}: all {self.shard.count} shards done -> {merged}")
        return self.out
