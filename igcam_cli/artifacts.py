"""Run-directory layout, atomic writes and step manifests.

Every artifact is written to a temporary file in its final folder and renamed into place, so a
step killed at any moment leaves either the old file, the new file, or a stale ``.tmp`` file
that the next run of the step removes - never a half-written artifact under its real name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from igcam_cli.errors import IgcamError

TMP_PREFIX = ".igcam-tmp-"

# The step folders of a run directory, named after the CLI subcommands that write them.
STEP_DIRS = ("train-cls", "propose", "influence", "prototypes", "cam", "refine", "eval", "vis")


@dataclass(frozen=True)
class RunDir:
    """The folders of one run; every step reads and writes only below ``root``."""

    root: Path

    def step(self, name: str) -> Path:
        if name not in STEP_DIRS:
            raise ValueError(f"unknown step folder {name!r}")
        return self.root / name


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and check that files can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=TMP_PREFIX):
            pass
    except OSError as exc:
        raise IgcamError(f"output directory {path} is not writable: {exc.strerror or exc}") from exc
    return path


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left by a killed run; returns how many were removed."""
    if not folder.is_dir():
        return 0
    stale = list(folder.glob(TMP_PREFIX + "*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _file_mode() -> int:
    """The mode a plain ``open()`` would give (mkstemp's files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + path.name + ".")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def write_json(path: Path, obj: Any) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def write_image(path: Path, image: Image.Image, **save_kwargs: Any) -> Path:
    buffer = io.BytesIO()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]
    image.save(buffer, format=fmt, **save_kwargs)
    return write_bytes(path, buffer.getvalue())


def write_torch(path: Path, obj: Any) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(items: Iterable[str]) -> str:
    """A short stable hash of a list of strings (image ids, file names and sizes)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("igcam", "torch", "torchvision", "numpy", "opencv-contrib-python-headless",
                 "pydensecrf2", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Shard:
    """``--shard I/N``: this process handles every N-th image starting at I (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            index_text, count_text = text.split("/")
            shard = cls(int(index_text), int(count_text))
        except ValueError:
            raise IgcamError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise IgcamError(f"--shard {text}: need 0 <= I < N")
        return shard

    def select(self, items: list) -> list:
        return items[self.index :: self.count]

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def manifest_name(self) -> str:
        """Shards of an array job write separate manifests so they never race on one file."""
        if self.is_whole:
            return "manifest.json"
        return f"manifest.shard-{self.index}-of-{self.count}.json"


@dataclass
class StepRecord:
    """What a step writes into its manifest: config, inputs, counts, warnings and timings."""

    step: str
    config: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def save(self, folder: Path, shard: Shard = Shard(), filename: str | None = None) -> Path:
        """Write the manifest (``filename`` overrides the shard's default name)."""
        self.timings["total_s"] = round(time.perf_counter() - self._start, 3)
        return write_json(folder / (filename or shard.manifest_name()), {
            "step": self.step,
            "complete": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "config": self.config,
            "inputs": self.inputs,
            "counts": self.counts,
            "warnings": self.warnings,
            "timings": self.timings,
            "versions": package_versions(),
            **self.extra,
        })


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished (unsharded) step, or None if the step has not completed."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("complete") else None
