"""Progress in a log file: lines at an interval while a step runs, for ``tail -f``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from harness import igcam

from igcam_cli.artifacts import write_cam


def test_off_a_terminal_a_step_writes_progress_lines_as_it_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cams = tmp_path / "cams"
    cams.mkdir()
    for index in range(5):
        write_cam(cams / f"{index}.npz", np.array([0]), np.ones((1, 8, 8), np.float16),
                  np.array([0.9]), tmp_path / f"{index}.png")
    monkeypatch.setenv("IGCAM_LOG_SECONDS", "0")  # a line at every image
    result = igcam("refine", "--run", tmp_path / "run", "--cams", cams, "--method", "none",
                   "--threshold", 0.4, "--workers", 1)
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^refine: (\d)/5 \(\d+%\), \d:\d\d:\d\d elapsed.* left$", result.stderr,
                       re.MULTILINE)
    assert [int(n) for n in lines][:5] == [1, 2, 3, 4, 5]
    monkeypatch.setenv("IGCAM_LOG_SECONDS", "3600")  # a short step: its last line alone
    result = igcam("refine", "--run", tmp_path / "run", "--cams", cams, "--method", "none",
                   "--threshold", 0.4, "--workers", 1, "--overwrite")
    assert re.findall(r"^refine: \d/5", result.stderr, re.MULTILINE) == ["refine: 5/5"]
