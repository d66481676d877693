"""The per-image runner: loads ahead and writes behind the main thread, with the serial path's
results, resume, shards, per-image failures and a clean stop."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import PROCESS_ENV, igcam, igcam_command

from igcam_cli.artifacts import TMP_PREFIX, StepRecord, read_cam, read_npz, write_npz
from igcam_cli.datasets import Sample, load_dataset
from igcam_cli.demo_data import make_demo_dataset
from igcam_cli.errors import ImageProblem
from igcam_cli.images import read_image, read_label_map
from igcam_cli.methods.multiscale import multiscale_cam
from igcam_cli.models import load_classifier
from igcam_cli.runner import ImageWork, read_sample, run_per_image
from igcam_cli.steps.cam import CamConfig, cam
from igcam_cli.steps.propose import ProposeConfig, propose
from igcam_cli.steps.refine import RefineConfig, refine
from igcam_cli.transforms import normalise, to_tensor


def _images(folder: Path, n: int, broken: set[int] = frozenset()) -> list[Sample]:
    """``n`` small JPEGs (those in ``broken`` are not images at all)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = folder / f"im{i:02d}.jpg"
        if i in broken:
            path.write_bytes(b"not a jpeg")
        else:
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(f"im{i:02d}", path))
    return samples


def _mean_colour(sample: Sample, image: np.ndarray) -> np.ndarray:
    return image.mean(axis=(0, 1)).astype(np.float32)


def _save(sample: Sample, result: np.ndarray, out: Path) -> None:
    write_npz(out / f"{sample.id}.npz", colour=result)


def _work(out: Path, **parts: object) -> ImageWork:
    return ImageWork(**{"load": read_sample, "compute": _mean_colour,
                        "write": functools.partial(_save, out=out), **parts})


def _run(samples: list[Sample], work: ImageWork, out: Path, *, io_workers: int = 2,
         strict: bool = False, overwrite: bool = False) -> StepRecord:
    record = StepRecord("test", {})
    run_per_image(samples, work, lambda s: out / f"{s.id}.npz", record, overwrite=overwrite,
                  strict=strict, workers=1, io_workers=io_workers, description="test")
    return record


def _no_leftovers(out: Path, before: set[threading.Thread]) -> None:
    """No temporary files, every file whole, and no runner thread left running."""
    assert not list(out.glob(TMP_PREFIX + "*"))
    for path in out.glob("*.npz"):
        read_npz(path)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("igcam-")]
    # rich's progress bar stops its refresh thread without joining it: it ends within 0.1 s.
    # Threads alive before the run (an earlier test's ending refresh thread) may end meanwhile:
    # only threads the run started count.
    deadline = time.monotonic() + 2
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(threading.enumerate()) - before, threading.enumerate()


@pytest.mark.parametrize("io_workers", [1, 2, 3])
def test_overlapped_writes_what_the_serial_path_writes(tmp_path: Path, io_workers: int) -> None:
    samples = _images(tmp_path / "images", 9, broken={4})
    serial, overlapped = tmp_path / "serial", tmp_path / "overlapped"
    serial.mkdir()
    overlapped.mkdir()
    a = _run(samples, _work(serial), serial, io_workers=0)
    b = _run(samples, _work(overlapped), overlapped, io_workers=io_workers)
    assert a.counts == b.counts == {"skipped_done": 0, "processed": 8, "failed": 1}
    assert a.warnings == b.warnings and "im04.jpg" in b.warnings[0]
    assert sorted(p.name for p in overlapped.glob("*.npz")) == \
        sorted(p.name for p in serial.glob("*.npz"))
    for path in serial.glob("*.npz"):
        assert np.array_equal(read_npz(path)["colour"], read_npz(overlapped / path.name)["colour"])


def test_warnings_keep_image_order_whatever_finishes_first(tmp_path: Path) -> None:
    """A slow write of an early image does not let later failures be counted before it."""
    samples = _images(tmp_path / "images", 6, broken={3, 5})
    out = tmp_path / "out"
    out.mkdir()

    def slow_then_fail(sample: Sample, result: np.ndarray) -> None:
        if sample.id == "im00":
            time.sleep(0.3)
            raise OSError(28, "No space left on device")
        _save(sample, result, out)

    record = _run(samples, _work(out, write=slow_then_fail), out)
    assert [w.split(":")[0].rsplit("/", 1)[-1] for w in record.warnings] == \
        ["im00.jpg", "im03.jpg", "im05.jpg"]


def test_a_decode_failure_is_that_image_s_warning(tmp_path: Path) -> None:
    samples = _images(tmp_path / "images", 5, broken={2})
    out = tmp_path / "out"
    out.mkdir()
    record = _run(samples, _work(out), out)
    assert record.counts["failed"] == 1 and record.counts["processed"] == 4
    assert "unreadable or corrupt image" in record.warnings[0]
    assert sorted(p.stem for p in out.glob("*.npz")) == ["im00", "im01", "im03", "im04"]
    with pytest.raises(ImageProblem, match="im02.jpg"):
        _run(samples, _work(out), out, strict=True, overwrite=True)


def test_a_writer_failure_is_reported_not_swallowed(tmp_path: Path) -> None:
    samples = _images(tmp_path / "images", 5)
    out = tmp_path / "out"
    out.mkdir()

    def full_disk_on_im01(sample: Sample, result: np.ndarray) -> None:
        if sample.id == "im01":
            raise OSError(28, "No space left on device")
        _save(sample, result, out)

    record = _run(samples, _work(out, write=full_disk_on_im01), out)
    assert record.counts == {"skipped_done": 0, "processed": 4, "failed": 1}
    assert record.warnings == [f"{samples[1].image}: output not written "
                               "(No space left on device)"]
    with pytest.raises(ImageProblem, match="No space left"):
        _run(samples, _work(out, write=full_disk_on_im01), out, strict=True, overwrite=True)

    def bug(sample: Sample, result: np.ndarray) -> None:
        raise ValueError("a bug in the writer")

    baseline = set(threading.enumerate())
    with pytest.raises(ValueError, match="a bug in the writer"):
        _run(samples, _work(out, write=bug), out, overwrite=True)
    _no_leftovers(out, baseline)


def test_resume_skips_finished_outputs_without_loading_them(tmp_path: Path) -> None:
    samples = _images(tmp_path / "images", 6)
    out = tmp_path / "out"
    out.mkdir()
    _run(samples[:4], _work(out), out)
    loaded: list[str] = []

    def load(sample: Sample) -> np.ndarray:
        loaded.append(sample.id)
        return read_sample(sample)

    record = _run(samples, _work(out, load=load), out)
    assert record.counts == {"skipped_done": 4, "processed": 2}
    assert sorted(loaded) == ["im04", "im05"]


@pytest.mark.parametrize("error", [RuntimeError("compute broke"), KeyboardInterrupt()])
def test_a_stop_in_compute_leaves_whole_files_and_no_threads(tmp_path: Path,
                                                             error: BaseException) -> None:
    samples = _images(tmp_path / "images", 12)
    out = tmp_path / "out"
    out.mkdir()

    def slow_write(sample: Sample, result: np.ndarray) -> None:
        time.sleep(0.05)  # writes still in flight when compute stops
        _save(sample, result, out)

    def compute(sample: Sample, image: np.ndarray) -> np.ndarray:
        if sample.id == "im05":
            raise error
        return _mean_colour(sample, image)

    baseline = set(threading.enumerate())
    with pytest.raises(type(error)):
        _run(samples, _work(out, compute=compute, write=slow_write), out)
    _no_leftovers(out, baseline)
    assert {p.stem for p in out.glob("*.npz")} <= {f"im{i:02d}" for i in range(5)}


def test_a_strict_failure_stops_the_threads_too(tmp_path: Path) -> None:
    samples = _images(tmp_path / "images", 10, broken={3})
    out = tmp_path / "out"
    out.mkdir()
    baseline = set(threading.enumerate())
    with pytest.raises(ImageProblem):
        _run(samples, _work(out), out, strict=True)
    _no_leftovers(out, baseline)


def _cam_config(run: Path, data: Path, out: Path, **changes: object) -> CamConfig:
    config = CamConfig(run=run, out=out, scales=(1.0, 0.5), device="cpu")
    return replace(config, dataset=replace(config.dataset, voc=data), **changes)


def test_cam_overlapped_files_equal_the_serial_files(trained_run: Path, tiny_voc: Path,
                                                     tmp_path: Path) -> None:
    serial = cam(_cam_config(trained_run, tiny_voc, tmp_path / "serial", io_workers=0))
    overlapped = cam(_cam_config(trained_run, tiny_voc, tmp_path / "overlapped", io_workers=2))
    files = sorted(p.name for p in serial.glob("*.npz"))
    assert len(files) == 24 and files == sorted(p.name for p in overlapped.glob("*.npz"))
    for name in files:
        a, b = read_cam(serial / name), read_cam(overlapped / name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)


def test_cam_files_hold_the_one_image_computation(trained_run: Path, tiny_voc: Path,
                                                  tmp_path: Path) -> None:
    """Bit for bit what the maps computed for one image, converted by numpy, give (kept at
    full size: --store-stride 1)."""
    config = _cam_config(trained_run, tiny_voc, tmp_path / "cam", store_stride=1)
    out = cam(config)
    model, _ = load_classifier(trained_run / "train-cls" / "classifier.pt", torch.device("cpu"))
    model = model.to(memory_format=torch.channels_last)
    for sample in load_dataset(config.dataset).samples[:4]:
        assert sample.labels
        cams, probs = multiscale_cam(model, to_tensor(read_image(sample.image)), config.scales,
                                     config.flip)
        stored = read_cam(out / f"{sample.id}.npz")
        assert np.array_equal(stored["classes"], np.array(sample.labels, dtype=np.int16))
        assert np.array_equal(stored["cams"],
                              normalise(cams[list(sample.labels)]).numpy().astype(np.float16))
        assert np.array_equal(stored["scores"], probs.numpy())


def test_cam_shard_writes_only_its_images(trained_run: Path, tiny_voc: Path,
                                          tmp_path: Path) -> None:
    config = _cam_config(trained_run, tiny_voc, tmp_path / "shard", shard="1/3")
    every = [s.id for s in load_dataset(config.dataset).samples]
    out = cam(config)
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(every[1::3])
    assert (out / "manifest.shard-1-of-3.json").is_file()


def test_worker_processes_write_what_the_threads_write(cam_run: Path, tiny_voc: Path,
                                                       tmp_path: Path) -> None:
    """``--workers 2`` ships the ImageWork's parts to spawned processes (propose, and refine
    for the refiners that hold no network): the files are those of the threaded runner."""
    written = {}
    for workers in (1, 2):
        masks = refine(RefineConfig(run=cam_run, cams=cam_run / "cam", method="none",
                                    workers=workers, out=tmp_path / f"refine-{workers}",
                                    save_scores=True))
        config = ProposeConfig(run=cam_run, mode="single", workers=workers,
                               out=tmp_path / f"propose-{workers}")
        boxes = propose(replace(config, dataset=replace(config.dataset, voc=tiny_voc)))
        written[workers] = {path.relative_to(tmp_path).as_posix().split("/", 1)[1]: path
                            for folder in (masks, boxes) for path in folder.rglob("*")
                            if path.suffix in (".png", ".npz")}
    assert len(written[1]) == 3 * 24 and written[1].keys() == written[2].keys()
    for name, path in written[1].items():
        if path.suffix == ".png":
            assert np.array_equal(read_label_map(path), read_label_map(written[2][name]))
        else:
            a, b = read_npz(path), read_npz(written[2][name])
            assert all(np.array_equal(a[key], b[key]) for key in a), name


@pytest.mark.slow
def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cam_promptly_with_whole_files(trained_run: Path, tmp_path: Path) -> None:
    """SIGINT in the middle of the overlapped runner: the process ends at once on its one line
    with status 130 (no thread keeps it alive), every file is whole, and a rerun finishes the
    rest."""
    # 192-px images at 3 scales: enough work that the step is still running when the signal
    # comes (at 96 px the faster cam step finished all 40 on an idle machine first)
    data = make_demo_dataset(tmp_path / "data", n_train=40, size=192, seed=5)
    out = tmp_path / "cam"
    args = ("cam", "--run", trained_run, "--voc", data, "--scales", "1.0,2.0,3.0",
            "--device", "cpu", "--out", out)
    # a job started in the background by a shell without job control inherits SIGINT ignored
    # (as `nohup` and `cmd &` in scripts do); the user's Ctrl-C case is the default disposition
    process = subprocess.Popen(igcam_command(*args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **PROCESS_ENV},
                               preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*.npz"))) < 3:
        assert process.poll() is None, "cam finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: finished files are kept")
    assert "Traceback" not in stderr
    done = sorted(out.glob("*.npz"))
    assert 3 <= len(done) < 40 and not list(out.glob(TMP_PREFIX + "*"))
    for path in done:
        read_cam(path)
    rerun = igcam(*args)
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"skipped_done": len(done), "processed": 40 - len(done),
                                  "failed": 0}


@pytest.mark.parametrize("io_workers", [1, 2])
def test_images_in_memory_stay_bounded(tmp_path: Path, io_workers: int) -> None:
    """However many images: at most 2N decoded ahead of compute, 2N results behind it (plus
    the one in hand), with slow writes holding results back."""
    samples = _images(tmp_path / "images", 30)
    out = tmp_path / "out"
    out.mkdir()
    lock = threading.Lock()
    counts = {"loaded": 0, "computed": 0, "written": 0}
    most = {"ahead": 0, "behind": 0}

    def bump(key: str) -> None:
        with lock:
            counts[key] += 1
            most["ahead"] = max(most["ahead"], counts["loaded"] - counts["computed"])
            most["behind"] = max(most["behind"], counts["computed"] - counts["written"])

    def load(sample: Sample) -> np.ndarray:
        bump("loaded")
        return read_sample(sample)

    def compute(sample: Sample, image: np.ndarray) -> np.ndarray:
        bump("computed")
        return _mean_colour(sample, image)

    def write(sample: Sample, result: np.ndarray) -> None:
        time.sleep(0.01)
        _save(sample, result, out)
        bump("written")

    record = _run(samples, _work(out, load=load, compute=compute, write=write), out,
                  io_workers=io_workers)
    assert record.counts["processed"] == 30
    assert 1 <= most["ahead"] <= 2 * io_workers + 1
    assert 1 <= most["behind"] <= 2 * io_workers + 1
