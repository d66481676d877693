"""Corrupted inputs for every step, and the checks every run on them must pass.

Shared by ``tests/test_fuzz.py`` (a few seeded rounds) and ``bench/fuzz.py`` (many). A run on
corrupted input may succeed (the bad files warned about, counted and skipped) or stop with one
``error:`` line, exit status 2; it must never print a traceback, write outside its run
directory, leave a half-written file, or write a manifest that disagrees with the files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import Result
from harness import igcam_process as igcam  # noqa: F401 - bench/fuzz.py runs each case alone

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


def check_run(result: Result | subprocess.CompletedProcess[str], root: Path, before: set[Path],
              allowed: list[Path], outputs: Path | None, suffix: str) -> list[str]:
    """What went wrong with one run on corrupted input; empty when nothing did."""
    problems = []
    if result.returncode not in (0, 2):
        problems.append(f"exit status {result.returncode}")
    if "Traceback" in result.stderr:
        problems.append("traceback: " + result.stderr.strip().splitlines()[-1])
    if result.returncode == 2 and not result.stderr.strip().splitlines()[-1].startswith("error:"):
        problems.append("no error line: " + result.stderr.strip()[-200:])
    new = snapshot(root) - before
    outside = [p for p in new if not any(p.is_relative_to(a) for a in allowed)]
    if outside:
        problems.append(f"wrote outside the run: {sorted(outside)[:3]}")
    if [p for p in new if p.name.startswith(TMP_PREFIX)]:
        problems.append("left a temporary file")
    if outputs is not None and result.returncode == 0:
        manifest = json.loads((outputs / "manifest.json").read_text())
        files = len(list(outputs.glob(f"*{suffix}")))
        counted = manifest["counts"].get("processed", 0) + manifest["counts"].get(
            "skipped_done", 0)
        if files != counted:
            problems.append(f"manifest counts {counted} outputs, the folder has {files}")
    return problems


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
