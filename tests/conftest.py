"""Shared fixtures: a tiny generated VOC dataset, a classifier trained on it once and its CAMs
built once, and the optional real data beside the repo.

The session's runs are read-only: a test that writes (another CAM method, propose, influence,
a second training stage ...) copies what it needs into its own run with :func:`copy_run`, so
that no test depends on which others ran before it, and ``pytest -n`` can split them. A test
that writes into a shared run anyway is reported as an error when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import TRAIN, copy_run, igcam, ok

from igcam_cli.demo_data import make_demo_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

def _contents(run: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*")}


def _read_only(run: Path) -> Iterator[Path]:
    """Yield ``run``, then fail the session if a test changed anything in it."""
    before = _contents(run)
    yield run
    assert _contents(run) == before, f"a test wrote into the shared run {run}: copy it first"


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated 64-px images with masks, classes.txt and a train split."""
    return make_demo_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=24, size=64, seed=3)


@pytest.fixture(scope="session")
def trained_run(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A run directory whose classifier was trained for two epochs on ``tiny_voc`` (only
    ``train-cls/``). Read-only."""
    run = tmp_path_factory.mktemp("run")
    ok(igcam("train-cls", "--run", run, "--voc", tiny_voc, *TRAIN))
    yield from _read_only(run)


@pytest.fixture(scope="session")
def cam_run(trained_run: Path, tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Path]:
    """``trained_run`` with the plain CAMs of ``tiny_voc`` at scale 1.0 in ``cam/``. Read-only."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("cams") / "run", "train-cls")
    ok(igcam("cam", "--run", run, "--voc", tiny_voc, "--scales", "1.0", "--device", "cpu"))
    yield from _read_only(run)


@pytest.fixture()
def own_run(trained_run: Path, tmp_path: Path) -> Path:
    """A run of this test's own, holding a copy of the session's trained classifier."""
    return copy_run(trained_run, tmp_path / "own-run", "train-cls")


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
