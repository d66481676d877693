"""Two jobs on one folder, and a redo with other options stopped half-way: a folder's files
never come from two recipes while its manifest names one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from harness import (
    PROCESS_ENV,
    TRAIN,
    copy_run,
    igcam,
    igcam_command,
    ok,
    one_line_error,
)

import igcam_cli.steps.refine as refine_step
from igcam_cli.artifacts import Claim, RunDir, Shard, ensure_dir, read_manifest, write_cam
from igcam_cli.errors import IgcamError

IMAGES = 6


@pytest.fixture()
def cams(tmp_path: Path) -> Path:
    """CAM files whose masks depend on the threshold: one class at 0.5 over a quarter."""
    folder = tmp_path / "cams"
    folder.mkdir()
    for index in range(IMAGES):
        maps = np.zeros((1, 16, 16), np.float16)
        maps[0, :8, :8] = 0.5
        write_cam(folder / f"{index}.npz", np.array([0]), maps, np.array([0.9]),
                  tmp_path / f"{index}.png")
    return folder


def _status(run: Path) -> dict:
    return json.loads(ok(igcam("status", "--run", run, "--json")).stdout)


def _refine(cams: Path, out: Path, threshold: float, *extra: str):
    return igcam("refine", "--run", cams.parent / "run", "--cams", cams, "--out", out,
                 "--method", "none", "--threshold", threshold, "--workers", 1, *extra)


def test_a_second_writer_is_refused_naming_the_first(cams: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    out.mkdir()
    holder = subprocess.Popen(  # another job holding the folder, as a running refine would
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\n"
         "from igcam_cli.artifacts import Claim, Shard\n"
         "claim = Claim(Path(sys.argv[1]), Shard(), 'refine')\n"
         "claim.mark({'threshold': 0.3})\n"
         "print('claimed', flush=True)\n"
         "sys.stdin.read()\n", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "claimed\n"
        one_line_error(_refine(cams, out, 0.4), "is being written by another `igcam refine`",
                       f"pid {holder.pid}")
        assert not list(out.glob("*.png"))
        state = _status(tmp_path)["masks"]
        assert state["state"] == "running" and f"pid {holder.pid}" in state["detail"]
    finally:
        holder.communicate("", timeout=30)
    # The holder was killed before it finished: its recipe stays, so another is refused ...
    one_line_error(_refine(cams, out, 0.4), "made with another", "threshold")
    assert _status(tmp_path)["masks"]["state"] == "stopped"
    ok(_refine(cams, out, 0.4, "--overwrite"))  # ... until redone
    assert read_manifest(out) is not None and not RunDir.unfinished_claims(out)
    state = _status(tmp_path)["masks"]
    assert state["state"] == "done" and state["counts"]["processed"] == IMAGES
    assert state["files"] == IMAGES and _status(tmp_path)["cams"]["state"] == "no manifest"
    table = ok(igcam("status", "--run", tmp_path)).stdout
    assert "masks" in table and "done" in table and "processed 6" in table


def test_a_redo_stopped_half_way_never_passes_for_done(
        cams: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "masks"
    ok(_refine(cams, out, 0.6))  # all background: 0.5 is under 0.6
    written = []
    save = refine_step.save_label_map

    def stopped(path: Path, labels: np.ndarray) -> None:  # Ctrl-C after two new masks
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        save(path, labels)

    monkeypatch.setattr(refine_step, "save_label_map", stopped)
    assert _refine(cams, out, 0.4, "--overwrite").returncode == 130
    monkeypatch.undo()
    assert read_manifest(out) is None  # neither the old recipe's nor the new one's
    claim = json.loads(RunDir.unfinished(out).read_text())
    assert claim["recipe"]["threshold"] == 0.4
    # The old command again: its files are no longer all its own, so it must not resume.
    one_line_error(_refine(cams, out, 0.6), "made with another threshold", "--overwrite")
    result = ok(_refine(cams, out, 0.4))  # the interrupted redo resumes and finishes
    assert "2 already done" in result.stderr
    assert json.loads(RunDir.manifest(out).read_text())["recipe"]["threshold"] == 0.4
    assert not RunDir.unfinished_claims(out)


def test_a_rerun_that_only_skips_keeps_the_manifest_of_the_work(cams: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "masks"
    ok(_refine(cams, out, 0.4))
    first = json.loads(RunDir.manifest(out).read_text())
    result = ok(_refine(cams, out, 0.4))
    assert f"{IMAGES} already done" in result.stderr
    again = json.loads(RunDir.manifest(out).read_text())
    assert again == first and again["counts"]["processed"] == IMAGES
    (out / "0.png").unlink()  # one image redone: the manifest is this run's again
    ok(_refine(cams, out, 0.4))
    redone = json.loads(RunDir.manifest(out).read_text())
    assert redone["counts"] == {"processed": 1, "skipped_done": IMAGES - 1}


def _hold(folder: Path, step: str) -> subprocess.Popen:
    """Another process holding ``folder``'s claim until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\n"
         "from pathlib import Path\n"
         "from igcam_cli.artifacts import Claim, Shard\n"
         f"claim = Claim(Path(sys.argv[1]), Shard(), {step!r})\n"
         "print('claimed', flush=True)\n"
         "sys.stdin.read()\n"
         "claim.done()\n", str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "claimed\n"
    return holder


def test_wait_waits_for_the_other_writer_then_works(cams: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    out.mkdir()
    holder = _hold(out, "refine")
    waiting = subprocess.Popen(
        igcam_command("refine", "--run", tmp_path / "run", "--cams", cams, "--out", out,
                      "--method", "none", "--threshold", "0.4", "--wait"),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, **PROCESS_ENV})
    try:
        assert waiting.stderr is not None
        line = waiting.stderr.readline()
        assert line.startswith("refine: waiting for another `igcam refine` (pid "
                               f"{holder.pid} on "), line
        assert waiting.poll() is None and not list(out.glob("*.png"))
    finally:
        holder.communicate("", timeout=30)  # the other one finishes ...
    _, rest = waiting.communicate(timeout=120)  # ... and the waiting one goes on
    assert waiting.returncode == 0, rest
    assert len(list(out.glob("*.png"))) == IMAGES and not RunDir.unfinished_claims(out)
    assert read_manifest(out)["counts"]["processed"] == IMAGES


def test_a_claim_removed_by_its_finishing_holder_is_taken_afresh(tmp_path: Path) -> None:
    """A waiter that gets the lock of a claim file its holder has just removed holds nothing:
    it claims the folder again, so that a third writer still finds it held."""
    first = Claim(tmp_path, Shard(), "cam")
    got: list[Claim] = []
    waiter = threading.Thread(target=lambda: got.append(Claim(tmp_path, Shard(), "cam",
                                                              wait=True)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # still waiting
    first.done()  # removes the file the waiter is blocked on
    waiter.join(timeout=30)
    assert got and got[0].path.is_file()
    with pytest.raises(IgcamError, match="is being written by another `igcam cam`"):
        Claim(tmp_path, Shard(), "cam")
    got[0].done()
    Claim(tmp_path, Shard(), "cam").done()


@pytest.mark.parametrize("step", ["train-cls", "train-aff"])
def test_training_steps_hold_their_folder(step: str, trained_run: Path, tiny_voc: Path,
                                          tmp_path: Path) -> None:
    """A second training into one folder stops before it trains, naming the first."""
    if step == "train-cls":
        run, args = tmp_path / "run", ("--voc", tiny_voc, *TRAIN)
    else:  # any readable CAM files will do: the claim comes before they are used
        run = copy_run(trained_run, tmp_path / "run", "train-cls")
        cams = ensure_dir(tmp_path / "cams")
        write_cam(cams / "a.npz", np.array([0]), np.zeros((1, 8, 8), np.float16),
                  np.array([0.9]), tmp_path / "a.png")
        args = ("--cams", cams, "--device", "cpu")
    folder = ensure_dir(RunDir(run).step(step))
    holder = _hold(folder, step)
    try:
        one_line_error(igcam(step, "--run", run, *args),
                       f"is being written by another `igcam {step}` (pid {holder.pid}")
        assert not list(folder.glob("*.pt"))
    finally:
        holder.communicate("", timeout=30)


def test_a_killed_run_s_forked_workers_do_not_keep_its_folder(tmp_path: Path) -> None:
    """Workers forked by a step (data loaders, per-image processes) outlive a ``kill -9`` of
    it for a while; they must not hold its claim, or the rerun is refused as a second writer."""
    script = ("import multiprocessing, os, signal, sys, time\n"
              "from pathlib import Path\n"
              "from igcam_cli.artifacts import Claim, Shard\n"
              "claim = Claim(Path(sys.argv[1]), Shard(), 'train-cls')\n"
              "worker = multiprocessing.get_context('fork').Process(target=time.sleep,"
              " args=(60,))\n"
              "worker.start()\n"
              "print(worker.pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    # not run(): the orphan keeps the output pipe open, so wait for the process alone
    killed = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert killed.stdout is not None
    worker = int(killed.stdout.readline())
    assert killed.wait(timeout=60) == -9
    killed.stdout.close()
    try:
        os.kill(worker, 0)  # the orphaned worker still runs ...
        Claim(tmp_path, Shard(), "train-cls").done()  # ... and the folder is free
    finally:
        os.kill(worker, 9)
