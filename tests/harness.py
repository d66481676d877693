"""Running ``igcam`` from the tests: in this process (most tests), or as a real process.

In process, :func:`igcam` calls :func:`igcam_cli.cli.main` with stdout and stderr captured,
which saves the seconds a new process spends importing torch. The command sees what the real
entry point sees: its own app, warnings written as ``warning: ...`` lines on its stderr (torch's
UserWarnings ignored, as the subprocess runs did), and rich's console writing to the captured
stderr without colour. What the command, typer or torch change in the process is put back.

:func:`igcam_process` starts ``python -m igcam_cli`` instead, for the tests where the process
is the point: signals, torchrun, exit status and error line of the real entry point.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from igcam_cli.cli import main
from igcam_cli.errors import console

# What a step's process is started with: torch's UserWarnings are not the user's concern.
PROCESS_ENV = {"PYTHONWARNINGS": "ignore::UserWarning"}
# The session's classifier: two quick epochs on the CPU.
TRAIN = ("--epochs", "2", "--crop", "64", "--batch-size", "8", "--loader-workers", "0",
         "--device", "cpu")


@dataclass(frozen=True)
class Result:
    """What one in-process command did; named as :class:`subprocess.CompletedProcess` names
    it, so that a check reads the same whichever way the command ran."""

    returncode: int
    stdout: str
    stderr: str


def _show_on_stderr(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: object = None, line: str | None = None) -> None:
    """Where Python's default shows a warning: the (captured) stderr, in main's format."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _isolated(cwd: Path | None) -> Iterator[None]:
    """Put back, after a command, the process state it may change: the environment (torch
    sets variables when it first loads a part of itself), torch's thread count, the working
    directory, the warning filters and hooks, and the excepthook typer installs."""
    environment, threads = dict(os.environ), torch.get_num_threads()
    hook, directory, colours = sys.excepthook, os.getcwd(), console._color_system
    # rich picks its colours when the console is made (under pytest's capture: none, as in a
    # pipe); with `pytest -s` in a terminal they would reach the captured text.
    console._color_system = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.showwarning = _show_on_stderr
            if cwd is not None:
                os.chdir(cwd)
            yield
    finally:
        sys.excepthook, console._color_system = hook, colours
        os.chdir(directory)
        os.environ.clear()
        os.environ.update(environment)
        torch.set_num_threads(threads)


def igcam(*args: str | Path | float, cwd: Path | None = None) -> Result:
    """``igcam ARGS`` run in this process; its exit status, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with _isolated(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return Result(code, stdout.getvalue(), stderr.getvalue())


def igcam_command(*args: str | Path) -> list[str]:
    """The command line of ``igcam ARGS`` as its own process."""
    return [sys.executable, "-m", "igcam_cli", *map(str, args)]


def igcam_process(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``igcam ARGS`` run as its own process (as a user or a cluster job would run it)."""
    return subprocess.run(igcam_command(*args), capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **PROCESS_ENV})


def one_line_error(result: Result | subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2 and one ``error:`` line on stderr naming every needle, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def ok(result: Result) -> Result:
    """``result`` after checking that its command succeeded."""
    assert result.returncode == 0, result.stderr
    return result


def copy_run(source: Path, target: Path, *folders: str) -> Path:
    """A new run directory ``target`` holding copies of ``folders`` of the run ``source``."""
    for folder in folders:
        shutil.copytree(source / folder, target / folder)
    return target
