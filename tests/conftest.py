"""Shared fixtures: a tiny generated VOC dataset and the optional real data beside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from igcam_cli.demo_data import make_demo_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated 64-px images with masks, classes.txt and a train split."""
    return make_demo_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=24, size=64, seed=3)


TRAIN = ("--epochs", "2", "--crop", "64", "--batch-size", "8", "--loader-workers", "0",
         "--device", "cpu")


@pytest.fixture(scope="session")
def trained_run(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose classifier was trained for two epochs on ``tiny_voc``."""
    run = tmp_path_factory.mktemp("run")
    result = igcam("train-cls", "--run", run, "--voc", tiny_voc, *TRAIN)
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="session")
def coco128() -> Path:
    root = SHARED / "coco128-voc"
    if not root.is_dir():
        pytest.skip("../shared/data/coco128-voc not present")
    return root


@pytest.fixture(scope="session")
def voc_sample() -> Path:
    root = SHARED / "voc-sample"
    if not root.is_dir():
        pytest.skip("../shared/data/voc-sample not present")
    return root


def igcam(*args: str | Path, cwd: Path | None = None, timeout: int = 600
          ) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess (as a user or a cluster job would)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"}
    return subprocess.run([sys.executable, "-m", "igcam_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)
