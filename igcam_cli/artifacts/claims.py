"""A per-image step's claim on its output folder: one writer at a time, and a record, kept
until the step finishes, of what it is making.

Two runs with different options into one folder would mix their files under one manifest, and
a redo with new options stopped half-way would leave old and new files beside the old
manifest, which a rerun of the old command would then take as done. So a step claims the
folder (its shard of it) before it writes anything: ``RunDir.unfinished(folder)`` is created
and locked (``flock``, released by the system however the process ends, so a killed run
leaves no stale lock), and the step writes its recipe into it before it removes or writes a
file. A second writer finds the lock and stops with one line naming the first; a later run
finds the recipe of a stopped one and treats the folder as made with it (the recipe check
refuses another, and ``read_manifest`` takes the folder as unfinished). ``done()`` removes the
claim once the manifest is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from igcam_cli.artifacts.io import FILE_MODE
from igcam_cli.artifacts.layout import RunDir
from igcam_cli.artifacts.shards import Shard
from igcam_cli.errors import IgcamError


def _content(fd: int) -> dict[str, Any] | None:
    """What a claim file says: None when empty (nothing claimed yet), {} when unreadable."""
    data = os.pread(fd, 1 << 20, 0)
    if not data.strip():
        return None
    try:
        content = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def read_claim(path: Path) -> dict[str, Any] | None:
    """A claim file's content without taking it (None: empty or gone, {}: unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _content(fd)
    finally:
        os.close(fd)


def holder(path: Path) -> dict[str, Any] | None:
    """The content of a claim some process holds now (a step running); None if none does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _content(fd) or {}
        return None
    finally:
        os.close(fd)


class Claim:
    """This process's hold on a folder (or its shard of one); see the module's docstring."""

    def __init__(self, folder: Path, shard: Shard, step: str) -> None:
        self.path = RunDir.unfinished(folder, shard.index, shard.count)
        self.step = step
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _content(fd) or {}
            os.close(fd)
            raise IgcamError(
                f"{folder} is being written by another `igcam {holder.get('step', step)}` "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                f"{holder.get('started', '?')}): wait for it to finish, or give another "
                "--out") from None
        self.fd: int | None = fd
        self.previous = _content(fd)  # a stopped run's claim, or None
        self.written = False

    def mark(self, recipe: Any, clearing: bool = False) -> None:
        """Say what this run makes, before it removes or writes any file; ``clearing`` while
        it removes the outputs of another recipe (a run that finds a claim stopped then
        clears again, since old files may remain)."""
        assert self.fd is not None, "a released claim marks nothing"
        data = json.dumps({"step": self.step, "recipe": recipe, "clearing": clearing,
                           "pid": os.getpid(),
                           "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)
        self.written = True

    def done(self) -> None:
        """The step finished (its manifest written): the claim goes."""
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Let go without finishing (an error, Ctrl-C): the recipe stays for the next run to
        see; a claim that never said anything goes."""
        if self.fd is None:
            return
        if not self.written and self.previous is None:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
