"""The per-image loop every image step shares: shard, skip finished, warn, count, progress."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from igcam_cli.artifacts import StepRecord
from igcam_cli.datasets import Sample
from igcam_cli.errors import ImageProblem

console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line in logs
T = TypeVar("T")


def progress_bar(*extra_columns: TextColumn) -> Progress:
    """A rich progress bar on stderr, so stdout stays clean for pipelines.

    Off a terminal (cluster logs) rich draws nothing while running and one final line at the
    end, so logs get a summary rather than thousands of redraws.
    """
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra_columns, TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


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
            continue
        if strict:
            raise ImageProblem(message)
        record.count("failed")
        record.warn(message)
        console.print(f"[yellow]warning:[/] {message}")
