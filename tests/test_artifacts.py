import json
from pathlib import Path

import numpy as np
import pytest

from igcam_cli.artifacts import (
    TMP_PREFIX,
    Shard,
    StepRecord,
    atomic_write,
    ensure_dir,
    read_manifest,
    remove_stale_temps,
    write_npz,
)
from igcam_cli.errors import IgcamError


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
