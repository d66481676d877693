"""Corrupted inputs for every step, and the checks every run on them must pass.

Shared by ``tests/test_fuzz.py`` (a few seeded rounds), ``tests/test_hostile.py`` (the
hostile-input corpus of ``tests/hostile.py``) and ``bench/fuzz.py`` (many). A run on
corrupted input may succeed (the bad files warned about, counted and skipped) or stop with one
``error:`` line, exit status 2; it must never print a traceback, write outside its run
directory, leave a half-written file, or write a manifest that disagrees with the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from harness import Result
from harness import igcam as run_here
from harness import igcam_process as igcam  # noqa: F401 - bench/fuzz.py runs each case alone
from hostile import Case

from igcam_cli.artifacts import TMP_PREFIX, write_npz

Corruption = Callable[[Path, np.random.Generator], None]


def truncate(path: Path, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(rng.integers(0, max(len(data) // 2, 1)))])


def empty(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(b"")


def noise(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(rng.integers(0, 256, max(path.stat().st_size, 64), np.uint8).tobytes())


def flip_bytes(path: Path, rng: np.random.Generator) -> None:
    """A few bytes changed in the middle: the header survives, the content does not."""
    data = bytearray(path.read_bytes())
    for index in rng.integers(len(data) // 4, len(data), 16):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_arrays(path: Path, rng: np.random.Generator) -> None:
    """An npz with the right keys and the wrong shapes or dtypes."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    key = sorted(k for k in arrays if arrays[k].ndim)[int(rng.integers(0, 100)) % sum(
        1 for k in arrays if arrays[k].ndim)]
    choice = int(rng.integers(0, 3))
    if choice == 0:
        arrays[key] = arrays[key].reshape(-1)  # flattened
    elif choice == 1:
        arrays[key] = arrays[key].astype(np.complex64)  # no step reads complex numbers
    else:
        arrays[key] = (arrays[key] * 0 + 99).astype(arrays[key].dtype)  # out of range
    write_npz(path, **arrays)


FILE_CORRUPTIONS: dict[str, Corruption] = {
    "truncated": truncate, "empty": empty, "random": noise, "flipped": flip_bytes}
NPZ_CORRUPTIONS: dict[str, Corruption] = {**FILE_CORRUPTIONS, "wrong-arrays": wrong_arrays}


def snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# What check_run and check_case call each kind of problem (the first word of its message),
# the columns of bench/fuzz.py's table.
PROBLEMS = ("traceback", "signal", "hang", "wrong", "mixed", "outside", "other")
HANG = 124  # the exit status a run stopped at its deadline is given, as timeout(1) gives it


def check_run(result: Result | subprocess.CompletedProcess[str], root: Path, before: set[Path],
              allowed: list[Path], outputs: Path | None, suffix: str) -> list[str]:
    """What went wrong with one run on corrupted input; empty when nothing did. Each message
    starts with its kind, a word of :data:`PROBLEMS`."""
    problems = []
    lines = result.stderr.strip().splitlines()
    if result.returncode == HANG:
        problems.append("hang: still running at its deadline")
    elif result.returncode < 0:
        problems.append(f"signal {-result.returncode}")
    elif result.returncode not in (0, 2):
        problems.append(f"other: exit status {result.returncode}")
    if "Traceback" in result.stderr:
        problems.append("traceback: " + lines[-1])
    errors = [line for line in lines if line.startswith("error:")]
    if result.returncode == 2 and (len(errors) != 1 or lines[-1] != errors[0]):
        problems.append("other: not one error line at the end: " + result.stderr.strip()[-300:])
    new = snapshot(root) - before
    outside = [p for p in new if not any(p.is_relative_to(a) for a in allowed)]
    if outside:
        problems.append(f"outside: wrote {sorted(outside)[:3]}")
    if [p for p in new if p.name.startswith(TMP_PREFIX)]:
        problems.append("mixed: left a temporary file")
    if outputs is not None and result.returncode == 0:
        problems += _manifest_problems(outputs, suffix)
    return problems


def _manifest_problems(outputs: Path, suffix: str) -> list[str]:
    """What disagrees between the per-image folder ``outputs`` and its manifest."""
    if not (outputs / "manifest.json").is_file():
        return [f"mixed: {outputs} has no manifest after a successful run"]
    manifest = json.loads((outputs / "manifest.json").read_text())
    files = len(list(outputs.glob(f"*{suffix}")))
    counted = manifest["counts"].get("processed", 0) + manifest["counts"].get("skipped_done", 0)
    if files != counted:
        return [f"mixed: manifest counts {counted} outputs, the folder has {files}"]
    return []


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread once ``seconds`` have passed (SIGALRM): a run
    in this process that does not end is stopped and counted, not waited for."""
    def stop(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Hang(BaseException):
    """A run past its deadline (a BaseException, so that no step's ``except Exception``
    takes it for the step's own error)."""


def in_process(args: tuple[str | Path, ...], timeout: float) -> Result:
    """``igcam ARGS`` in this process under a deadline; an exception that escapes ``main``
    (which a user would see as a traceback) is returned as one, a hang as exit status 124."""
    try:
        with deadline(timeout):
            return run_here(*args)
    except Hang as hang:
        return Result(HANG, "", f"hang: {hang}")
    except Exception:  # noqa: BLE001 - what escapes main is the finding
        return Result(1, "", traceback.format_exc())


def forked(args: tuple[str | Path, ...], timeout: float) -> Result:
    """``igcam ARGS`` in a forked child of this process (torch is imported once, not per
    case): its signals and hangs cannot take the caller down. Killed at ``timeout``."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits
        os.close(reader)
        result = in_process(args, timeout + 60)
        with os.fdopen(writer, "w") as pipe:
            json.dump([result.returncode, result.stdout[-4000:], result.stderr[-4000:]], pipe)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        ready, _, _ = select.select([pipe], [], [], timeout)
        text = pipe.read() if ready else ""
        if not ready:
            os.kill(child, signal.SIGKILL)
        _, status = os.waitpid(child, 0)
    if not ready:
        return Result(HANG, "", f"hang: still running after {timeout} s")
    if os.WIFSIGNALED(status):
        return Result(-os.WTERMSIG(status), "", f"killed by signal {os.WTERMSIG(status)}")
    code, stdout, stderr = json.loads(text)
    return Result(code, stdout, stderr)


def check_case(case: Case, folder: Path, run: Callable[[tuple[str | Path, ...]], Result]
               ) -> tuple[Result, list[str]]:
    """Build ``case`` below ``folder``, run it with ``run`` and say what went wrong: the
    problems of :func:`check_run` (nothing may be written outside ``folder``), a refused
    input that was taken, and a successful run whose output is not what the input says."""
    invocation = case.build(folder)
    before = snapshot(folder)
    result = run(invocation.args)
    problems = check_run(result, folder, before, [folder / "run"], invocation.outputs,
                         invocation.suffix)
    if result.returncode == 0 and invocation.refuse:
        problems.append("wrong: taken, though it must be refused")
    elif result.returncode == 0 and invocation.expect is not None and not problems:
        problems += [f"wrong: {message}" for message in invocation.expect()]
    return result, problems


def corrupt_copy(source: Path, target: Path, pattern: str, corruptions: dict[str, Corruption],
                 rng: np.random.Generator, count: int) -> list[str]:
    """Copy ``source`` to ``target`` and corrupt ``count`` of its files matching ``pattern``;
    returns what was done, for the failure message."""
    shutil.copytree(source, target, symlinks=False)
    files = sorted(target.glob(pattern))
    done = []
    for index in rng.choice(len(files), size=min(count, len(files)), replace=False):
        name = sorted(corruptions)[int(rng.integers(0, len(corruptions)))]
        corruptions[name](files[index], rng)
        done.append(f"{files[index].name}: {name}")
    return done
