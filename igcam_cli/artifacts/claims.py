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

import contextlib
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
from igcam_cli.errors import IgcamError, console


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


def made_outputs(claim: dict[str, Any]) -> bool:
    """Whether a claim's run began making outputs: it named its recipe (or the file cannot
    be read, so it may have), as against a claim that only says who holds the folder."""
    return claim == {} or "recipe" in claim


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


# The descriptors of the claims this process holds. A forked child (a data-loading or
# per-image worker) inherits them, and a flock lasts while any process holds a descriptor of
# it: a run killed with -9 would leave its folder locked until its workers noticed and
# exited. So every forked child closes them at once; the parent alone holds its claims.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``: a lock taken on a claim that its
    holder removed meanwhile (it finished) locks nothing anyone else will look at."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class Claim:
    """This process's hold on a folder (or its shard of one); see the module's docstring.

    Held by another process, it is one line naming that process, or with ``wait`` a wait
    until the other lets go (a line says so first; Ctrl-C stops waiting)."""

    def __init__(self, folder: Path, shard: Shard, step: str, wait: bool = False) -> None:
        self.path = RunDir.unfinished(folder, shard.index, shard.count)
        self.step = step
        said = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _content(fd) or {}
                who = (f"another `igcam {holder.get('step', step)}` (pid "
                       f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                       f"{holder.get('started', '?')})")
                if not wait:
                    os.close(fd)
                    raise IgcamError(f"{folder} is being written by {who}: wait for it to "
                                     "finish (--wait), or give another --out") from None
                if not said:
                    console.print(f"{step}: waiting for {who} to finish with {folder}")
                    said = True
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
                except BaseException:
                    os.close(fd)
                    raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder finished and removed it: claim the folder afresh
        self.fd: int | None = fd
        _HELD.add(fd)
        content = _content(fd)
        # a stopped run's claim on the outputs (its recipe), or None
        self.previous = content if content is not None and made_outputs(content) else None
        self.written = False
        # who holds it, from the start (a training step never marks a recipe); a stopped
        # run's recipe stays in it until this run marks its own
        self._write(self._identity() if self.previous is None else
                    {**self.previous, "recipe": self.previous.get("recipe"), **self._identity()})

    def mark(self, recipe: Any, clearing: bool = False) -> None:
        """Say what this run makes, before it removes or writes any file; ``clearing`` while
        it removes the outputs of another recipe (a run that finds a claim stopped then
        clears again, since old files may remain)."""
        self._write({**self._identity(), "recipe": recipe, "clearing": clearing})
        self.written = True

    def _identity(self) -> dict[str, Any]:
        return {"step": self.step, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _write(self, content: dict[str, Any]) -> None:
        assert self.fd is not None, "a released claim says nothing"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(content).encode(), 0)
        os.fsync(self.fd)

    def done(self) -> None:
        """The step finished (its manifest written): the claim goes."""
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Let go without finishing (an error, Ctrl-C): the recipe stays for the next run to
        see; a claim that never named one goes."""
        if self.fd is None:
            return
        if not self.written and self.previous is None:
            self.path.unlink(missing_ok=True)
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None
