"""Two jobs on one folder, and a redo with other options stopped half-way: a folder's files
never come from two recipes while its manifest names one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import igcam, ok, one_line_error

import igcam_cli.steps.refine as refine_step
from igcam_cli.artifacts import RunDir, read_manifest, write_cam

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
