"""Several processes under torchrun: DDP training, rank sharding and merged shard manifests.

Every run here is the real CLI under ``python -m torch.distributed.run`` with two CPU
processes (gloo), on the tiny generated dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from harness import PROCESS_ENV, TRAIN, igcam, igcam_process

from igcam_cli import distributed
from igcam_cli.artifacts import Shard, merge_shards, read_npz
from igcam_cli.errors import IgcamError
from igcam_cli.report.facts import read_run


def torchrun(*args: str | Path, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone`` (a free port) running ``python -m igcam_cli ARGS``.

    torchrun's own parser takes any unambiguous prefix of its options, and --run is one of
    --run-path: the tests pass igcam's -r, which goes through to the step.
    """
    env = {**os.environ, **PROCESS_ENV, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes), "-m", "igcam_cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ddp")
    result = torchrun("train-cls", "-r", run, "--voc", tiny_voc, *TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.slow
def test_ddp_training_writes_one_classifier_and_whole_epoch_metrics(ddp_run: Path) -> None:
    folder = ddp_run / "train-cls"
    assert sorted(p.name for p in folder.iterdir()) == [
        "classifier.pt", "epoch-001.pt", "epoch-002.pt", "manifest.json", "metrics.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["counts"]["images"] == 24
    history = json.loads((folder / "metrics.json").read_text())
    # 24 images in global batches of 8: both processes' 12 images per epoch are scored.
    assert [h["images"] for h in history] == [24, 24]
    assert all(np.isfinite(h["loss"]) and 0 <= h["train_map"] <= 1 for h in history)
    epoch = torch.load(folder / "epoch-002.pt", weights_only=True)
    assert len(epoch["rank_rngs"]) == 2 and not torch.equal(*epoch["rank_rngs"])


@pytest.mark.slow
def test_ddp_training_resumed_after_epoch_one_ends_with_the_same_weights(
        ddp_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    """The run as a stop after epoch 1 leaves it: that epoch's checkpoint alone."""
    run = tmp_path / "stopped"
    (run / "train-cls").mkdir(parents=True)
    shutil.copy(ddp_run / "train-cls" / "epoch-001.pt", run / "train-cls")
    result = torchrun("train-cls", "-r", run, "--voc", tiny_voc, *TRAIN, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("resuming after epoch 1") == 1  # rank 0 alone says it
    a, b = _weights(ddp_run / "train-cls" / "classifier.pt"), _weights(run / "train-cls" /
                                                                        "classifier.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_take_the_steps_and_weights_of_one_with_the_same_batch(
        tiny_voc: Path, tmp_path: Path) -> None:
    """Same global batch, same optimizer steps, same weights up to float rounding.

    ResNet-50 (from a saved random state: no stochastic depth, no download): EfficientNet's
    drop-connect draws differ per process. Not bit-identical: each process's loss is the
    mean over its 2 images and DDP averages the two gradients, which rounds otherwise than
    one mean over 4. Measured (one epoch, 6 steps): weights differ by at most 5.2e-6, loss
    by 1.6e-5 (of 3.26).
    """
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    args = ("--voc", tiny_voc, "--epochs", "1", "--crop", "32", "--batch-size", "4",
            "--loader-workers", "0", "--device", "cpu", "--backbone", "resnet50",
            "--weights", weights, "--lr", "0.001")
    one, two = tmp_path / "one", tmp_path / "two"
    assert igcam("train-cls", "-r", one, *args).returncode == 0
    result = torchrun("train-cls", "-r", two, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [torch.load(run / "train-cls" / "epoch-001.pt", weights_only=True)
              for run in (one, two)]
    assert [s["scheduler"]["last_epoch"] for s in states] == [6, 6]  # 24 images / 4
    assert states[0]["history"][0]["lr"] == states[1]["history"][0]["lr"]
    assert states[0]["history"][0]["loss"] == pytest.approx(states[1]["history"][0]["loss"],
                                                            rel=1e-4)
    a, b = states[0]["model"], states[1]["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-4) for k in a)


@pytest.mark.slow
def test_cam_under_torchrun_splits_the_images_and_merges_its_manifests(
        ddp_run: Path, tiny_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("--voc", tiny_voc, "--device", "cpu", "--scales", "1.0,0.5")
    single = tmp_path / "single"
    # Each torchrun process gets one OpenMP thread; the one-process run must too, since the
    # CPU kernels' summation order (so the last bits of a CAM) follows the thread count: a
    # process of its own, started with that setting.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert igcam_process("cam", "-r", ddp_run, *args, "--out", single).returncode == 0
    result = torchrun("cam", "-r", ddp_run, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    out = ddp_run / "cam"
    files = sorted(p.name for p in single.glob("*.npz"))
    assert len(files) == 24 and sorted(p.name for p in out.glob("*.npz")) == files
    for name in files:
        a, b = read_npz(single / name), read_npz(out / name)
        assert all(np.array_equal(a[key], b[key]) for key in ("classes", "cams", "scores"))
    shards = [json.loads((out / f"manifest.shard-{i}-of-2.json").read_text()) for i in (0, 1)]
    assert [s["counts"]["processed"] for s in shards] == [12, 12]
    merged = json.loads((out / "manifest.json").read_text())  # by the last process to finish
    assert merged["counts"]["processed"] == 24 and len(merged["shards"]) == 2
    assert merged["recipe"] == shards[0]["recipe"]
    assert merged["timings"]["total_s"] == pytest.approx(
        sum(s["timings"]["total_s"] for s in shards), abs=2e-3)
    (out / "manifest.json").unlink()
    again = igcam("merge-shards", "-f", ddp_run)  # every sharded folder of the run
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"] == merged["counts"]
    step = next(s for s in read_run(ddp_run).steps if s.where == "cam")
    assert step.shards == 2 and step.counts["processed"] == 24  # not the shards counted twice


def _error_lines(result: subprocess.CompletedProcess[str]) -> set[str]:
    assert result.returncode != 0
    assert "igcam_cli/cli.py" not in result.stderr  # no traceback of the step's own
    return {line.split("error:", 1)[1].strip() for line in result.stderr.splitlines()
            if "error:" in line}


@pytest.mark.slow
def test_bad_inputs_under_torchrun_are_one_line_errors(ddp_run: Path, tiny_voc: Path,
                                                       tmp_path: Path) -> None:
    odd = _error_lines(torchrun("train-cls", "-r", tmp_path / "odd", "--voc", tiny_voc,
                                *TRAIN[:4], "--batch-size", "7", "--device", "cpu"))
    assert len(odd) == 1 and "--batch-size 7 does not divide by the 2 processes" in odd.pop()
    sharded = _error_lines(torchrun("cam", "-r", ddp_run, "--voc", tiny_voc, "--device", "cpu",
                                    "--shard", "0/2", "--out", tmp_path / "cam"))
    assert len(sharded) == 1 and "--shard 0/2 cannot be combined with torchrun" in sharded.pop()

    folder = tmp_path / "array"
    folder.mkdir()
    for index in (0, 2):
        (folder / f"manifest.shard-{index}-of-4.json").write_text(json.dumps(
            {"step": "cam", "complete": True, "recipe": {}, "counts": {"processed": 1}}))
    result = igcam("merge-shards", "-f", folder)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {folder}: 2 of 4 shards missing, e.g. 1/4, 3/4 "
        "(no manifest.shard-I-of-4.json): run them, then merge again"]
    assert not (folder / "manifest.json").exists()


def test_merge_refuses_shards_made_with_other_options(tmp_path: Path) -> None:
    for index, scales in ((0, [1.0]), (1, [1.0, 2.0])):
        (tmp_path / f"manifest.shard-{index}-of-2.json").write_text(json.dumps(
            {"step": "cam", "complete": True, "recipe": {"scales": scales}}))
    with pytest.raises(IgcamError, match="shard 1/2 was made by another step or with other"):
        merge_shards(tmp_path)


def test_torchrun_environment_gives_the_shard_and_device(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    images = list(range(10))
    assert distributed.shard("1/4").select(images) == Shard.parse("1/4").select(images)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.shard(None) == Shard(1, 4)
    assert distributed.shard(None).select(images) == [1, 5, 9]
    with pytest.raises(IgcamError, match="cannot be combined with torchrun"):
        distributed.shard("1/4")
    assert distributed.device_name("cpu") == "cpu"
    assert distributed.device_name("cuda") == "cuda:1"
    with pytest.raises(IgcamError, match="does not divide"):
        distributed.world().per_rank_batch(6)
    assert distributed.world().per_rank_batch(8) == 2


def _gather(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    world = distributed.World(rank, 2, rank)
    with world.joined(torch.device("cpu")):
        values = world.gather({"rank": rank, "scores": np.full(3, rank)})
        world.barrier()
    if world.is_main:
        torch.save([v["rank"] for v in values] + [float(values[1]["scores"].sum())], out)


def test_gather_returns_every_process_value_in_rank_order(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "gathered.pt"
    mp.spawn(_gather, args=(port, out), nprocs=2)
    assert torch.load(out, weights_only=True) == [0, 1, 3.0]
