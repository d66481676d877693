import json
from pathlib import Path

import numpy as np
import pytest
import torch

from igcam_cli.artifacts import (
    TMP_PREFIX,
    RunDir,
    Shard,
    StepRecord,
    atomic_write,
    ensure_dir,
    read_manifest,
    read_npz,
    remove_stale_temps,
    write_npz,
)
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.runner import resolve_device


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def broken(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_npz_roundtrip_and_stale_temp_cleanup(tmp_path: Path) -> None:
    write_npz(tmp_path / "x.npz", cams=np.ones((2, 3, 3), np.float16))
    (tmp_path / f"{TMP_PREFIX}x.npz.abc").write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 1
    with np.load(tmp_path / "x.npz") as data:
        assert data["cams"].shape == (2, 3, 3)


def test_shards_partition_the_images() -> None:
    items = list(range(10))
    parts = [Shard.parse(f"{i}/3").select(items) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert Shard.parse(None).select(items) == items
    assert Shard.parse("1/3").manifest_name() == "manifest.shard-1-of-3.json"
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(IgcamError):
            Shard.parse(bad)


def test_unwritable_output_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(IgcamError, match="not writable"):
        ensure_dir(blocker / "run")


def test_manifest_records_counts_and_is_complete(tmp_path: Path) -> None:
    record = StepRecord("cam", {"scales": [1.0]})
    record.count("processed", 3)
    record.warn("x.jpg: unreadable")
    record.save(tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest["counts"] == {"processed": 3}
    assert manifest["warnings"] == ["x.jpg: unreadable"]
    assert "torch" in json.loads((tmp_path / "manifest.json").read_text())["versions"]


def test_corrupt_or_missing_npz_is_an_image_problem(tmp_path: Path) -> None:
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "noise.npz").write_bytes(bytes(range(256)) * 4)
    for name in ("empty.npz", "noise.npz", "absent.npz"):
        with pytest.raises(ImageProblem, match=name):
            read_npz(tmp_path / name)


def test_run_dir_names_every_derived_folder(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.classifier() == tmp_path / "train-cls" / "classifier.pt"
    assert run.classifier("stage2") == tmp_path / "train-cls-stage2" / "classifier.pt"
    assert run.cam() == tmp_path / "cam" and run.cam("lpcam+igcam") == tmp_path / "cam-lpcam+igcam"
    assert run.eval_report("seed") == tmp_path / "eval" / "seed.json"
    assert run.step("fit-level") == tmp_path / "fit-level"  # a new step needs no list
    for wrong in ("../elsewhere", "train_aff", "Cam", "", "cam/"):
        with pytest.raises(ValueError):
            run.step(wrong)


def test_devices_resolve_or_fail_with_one_message() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(IgcamError, match="--device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(IgcamError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_cleanup_keeps_the_temps_of_live_processes(tmp_path: Path) -> None:
    """Every step removed all temps at start, so one shard could delete another's file."""
    import os
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}@{host}@a.npz.x1"
    gone = tmp_path / f"{TMP_PREFIX}{dead}@{host}@b.npz.x2"
    elsewhere = tmp_path / f"{TMP_PREFIX}{dead}@another-host@c.npz.x3"
    for path in (live, gone, elsewhere):
        path.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 1
    assert live.exists() and not gone.exists() and elsewhere.exists()
    old = 2 * 24 * 3600
    os.utime(elsewhere, (elsewhere.stat().st_atime - old, elsewhere.stat().st_mtime - old))
    assert remove_stale_temps(tmp_path) == 1 and not elsewhere.exists()
    write_npz(tmp_path / "d.npz", x=np.zeros(1))  # a write names its temp after its writer
    assert list(tmp_path.glob(TMP_PREFIX + "*")) == [live] and (tmp_path / "d.npz").exists()


def test_proposal_and_influence_files_are_checked(tmp_path: Path) -> None:
    from igcam_cli.artifacts import (
        read_influence_map,
        read_proposals,
        write_influence_map,
        write_proposals,
    )

    image = tmp_path / "image.png"
    write_proposals(tmp_path / "ok.npz", np.array([[0, 0, 8, 8]]), np.ones(1), image, (16, 16))
    assert read_proposals(tmp_path / "ok.npz")["boxes"].shape == (1, 4)
    write_proposals(tmp_path / "out.npz", np.array([[0, 0, 40, 8]]), np.ones(1), image, (16, 16))
    write_npz(tmp_path / "flat.npz", boxes=np.zeros(4, np.int32), size=np.array([16, 16]))
    for name in ("out.npz", "flat.npz"):
        with pytest.raises(ImageProblem, match=name):
            read_proposals(tmp_path / name)
    write_influence_map(tmp_path / "map.npz", [1, 2], np.zeros((2, 4, 4)))
    assert read_influence_map(tmp_path / "map.npz")["classes"].tolist() == [1, 2]
    write_npz(tmp_path / "short.npz", classes=np.array([1, 2]), maps=np.zeros((1, 4, 4)))
    with pytest.raises(ImageProblem, match="short.npz"):
        read_influence_map(tmp_path / "short.npz")
