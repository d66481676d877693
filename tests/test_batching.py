"""Batching images of one size through the network, and enlarging only the kept classes' maps:
the CAM files hold what one image at a time gives, up to float rounding."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igcam_cli.artifacts import StepRecord, read_cam, write_npz, write_torch
from igcam_cli.backbones import build_backbone
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.methods.multiscale import (
    LevelFusionOptions,
    base_cams,
    multiscale_cam,
    multiscale_cams,
)
from igcam_cli.models import CamNet, save_checkpoint_payload
from igcam_cli.runner import ImageWork, read_sample, run_per_image
from igcam_cli.steps.cam import CamConfig, cam

SCALES = (1.0, 0.5, 1.5)


def _model(fpn_channels: int | None = None) -> CamNet:
    torch.manual_seed(0)
    model = CamNet(build_backbone("efficientnet-lite0", pretrained=False), 4, fpn_channels)
    with torch.no_grad():  # every class fires somewhere, so no map is all zero
        model.classifier.weight.abs_()
    return model.eval().to(memory_format=torch.channels_last)


def _close(batched: torch.Tensor, alone: torch.Tensor) -> None:
    """Equal up to float rounding: well inside float16's step (1/1024 of the maps' peak)."""
    scale = float(alone.abs().max())
    assert scale > 0
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("fpn", [None, 16], ids=["plain", "fpn"])
def test_a_batch_of_one_size_gives_each_image_s_own_maps(fpn: int | None) -> None:
    model = _model(fpn)
    torch.manual_seed(1)
    images = torch.rand(3, 3, 48, 80)
    samples = [Sample(f"im{i}", Path(f"im{i}.jpg")) for i in range(3)]
    chosen = {"im0": [0, 2], "im1": [3], "im2": []}
    compute = base_cams(model, SCALES, True, LevelFusionOptions(), None)
    batched = compute(samples, images, lambda sample, probs: chosen[sample.id])
    for sample, image, (classes, cams, probs) in zip(samples, images, batched, strict=True):
        [(alone_classes, alone, alone_probs)] = compute([sample], image[None],
                                                        lambda s, p: chosen[s.id])
        assert classes == alone_classes == chosen[sample.id]
        assert cams.shape == (len(classes), 48, 80)
        if classes:
            _close(cams, alone)
        _close(probs, alone_probs)


def test_only_the_kept_classes_are_enlarged_and_they_are_unchanged() -> None:
    """Enlarging a class's map alone gives bit for bit its row of every class enlarged."""
    model = _model()
    image = torch.rand(3, 50, 70)
    every, probs = multiscale_cam(model, image, SCALES, True)
    kept, kept_probs = multiscale_cam(model, image, SCALES, True, [3, 1])
    assert every.shape == (4, 50, 70) and kept.shape == (2, 50, 70)
    assert torch.equal(kept, every[[3, 1]]) and torch.equal(kept_probs, probs)


def test_classes_can_come_from_the_scores() -> None:
    """An unlabelled image keeps the classes its own scale-1 scores pick."""
    model = _model()
    images = torch.rand(2, 3, 32, 32)
    picked = []

    def keep(index: int, probs: torch.Tensor) -> list[int]:
        picked.append((index, probs.clone()))
        return [int(probs.argmax())]

    kept = multiscale_cams(model, images, (0.5, 1.0), False, keep)
    for i, (classes, cams, probs) in enumerate(kept):
        alone, alone_probs = multiscale_cam(model, images[i], (0.5, 1.0), False)
        assert picked[i][0] == i and torch.equal(picked[i][1], probs)
        assert classes == [int(alone_probs.argmax())]
        _close(cams, alone[classes])


def _mixed_folder(root: Path) -> tuple[Path, Path]:
    """Nine photos-like images in three sizes, interleaved, with labels."""
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True)
    labels = {}
    for i in range(9):
        height, width = [(48, 64), (64, 48), (40, 40)][i % 3]
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            images / f"im{i}.jpg")
        labels[f"im{i}"] = [["a", "b"], ["c"], ["a"]][i % 3]
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    return images, root / "labels.json"


def _folder_cam(root: Path, out: str, **changes: object) -> CamConfig:
    """``cam`` over :func:`_mixed_folder`'s images in ``root``, with ``root/run``'s classifier."""
    base = CamConfig(run=root / "run", out=root / out, device="cpu",
                     **{"scales": (1.0,), **changes})
    return replace(base, dataset=replace(base.dataset, images=root / "images",
                                         labels=root / "labels.json",
                                         classes=root / "classes.txt"))


def _train_tiny(run: Path) -> None:
    """A classifier of the folder's four classes, untrained (batching is what is tested)."""
    (run / "train-cls").mkdir(parents=True)
    write_torch(run / "train-cls" / "classifier.pt",
                save_checkpoint_payload(_model(), "efficientnet-lite0", ("a", "b", "c", "d")))


def test_cam_step_batched_writes_the_one_image_files(tmp_path: Path) -> None:
    _mixed_folder(tmp_path)
    _train_tiny(tmp_path / "run")
    one = cam(_folder_cam(tmp_path, "one", scales=(1.0, 0.5), batch_images=1))
    many = cam(_folder_cam(tmp_path, "many", scales=(1.0, 0.5), batch_images=4))
    names = sorted(p.name for p in one.glob("*.npz"))
    assert len(names) == 9 and names == sorted(p.name for p in many.glob("*.npz"))
    for name in names:
        a, b = read_cam(one / name), read_cam(many / name)
        assert np.array_equal(a["classes"], b["classes"]) and a["cams"].shape == b["cams"].shape
        # float16 files: at most one rounding step apart where batching rounded otherwise
        assert np.abs(a["cams"].astype(np.float32) - b["cams"]).max() <= 2 ** -10
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=1e-6)
    recipe = json.loads((many / "manifest.json").read_text())["recipe"]
    assert "batch_images" not in recipe  # the same folder may be resumed at another batch


def _sized(folder: Path, sizes: list[int], broken: frozenset[int] = frozenset()) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, side in enumerate(sizes):
        path = folder / f"im{i:02d}.png"
        if i in broken:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(np.full((side, side, 3), i, dtype=np.uint8)).save(path)
        samples.append(Sample(f"im{i:02d}", path))
    return samples


def _batched_run(samples: list[Sample], out: Path, batch: int, bad: frozenset[int] = frozenset()
                 ) -> tuple[StepRecord, list[list[str]]]:
    """The runner over ``samples`` with a batch compute that logs the batches it gets and
    fails on the images whose first pixel is in ``bad``."""
    batches: list[list[str]] = []
    out.mkdir()

    def one(sample: Sample, image: np.ndarray) -> np.ndarray:
        if int(image[0, 0, 0]) in bad:
            raise ImageProblem(f"{sample.image}: bad pixel")
        return image.mean(axis=(0, 1))

    def many(group: list[Sample], images: list[np.ndarray]) -> list[np.ndarray]:
        batches.append([s.id for s in group])
        return [one(s, x) for s, x in zip(group, images, strict=True)]

    work = ImageWork(read_sample, one, lambda s, r: write_npz(out / f"{s.id}.npz", mean=r),
                     compute_batch=many, group=lambda image: image.shape, batch=batch)
    record = StepRecord("test", {})
    run_per_image(samples, work, lambda s: out / f"{s.id}.npz", record, overwrite=False,
                  strict=False, workers=1, io_workers=2, description="test")
    return record, batches


def test_runner_batches_only_neighbours_of_one_group_up_to_the_batch_size(tmp_path: Path
                                                                         ) -> None:
    samples = _sized(tmp_path / "in", [8, 8, 8, 8, 8, 12, 12, 8, 16])
    record, batches = _batched_run(samples, tmp_path / "out", batch=3)
    assert batches == [["im00", "im01", "im02"], ["im03", "im04"], ["im05", "im06"]]
    assert record.counts["processed"] == 9  # the lone im07 and im08 went through compute
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.npz")) == [s.id for s in samples]


def test_a_problem_in_a_batch_stays_with_its_image(tmp_path: Path) -> None:
    """A failing compute in a batch is found again image by image, and an unreadable image
    ends a batch without taking its neighbours with it."""
    samples = _sized(tmp_path / "in", [8, 8, 8, 8, 8, 8], broken=frozenset({4}))
    record, batches = _batched_run(samples, tmp_path / "out", batch=4, bad=frozenset({1}))
    assert batches == [["im00", "im01", "im02", "im03"]]
    assert record.counts["processed"] == 4 and record.counts["failed"] == 2
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.npz")) == \
        ["im00", "im02", "im03", "im05"]
    assert sum("bad pixel" in w for w in record.warnings) == 1


def test_bf16_autocast_changes_the_maps_a_little_and_is_part_of_the_recipe(tmp_path: Path
                                                                          ) -> None:
    _mixed_folder(tmp_path)
    _train_tiny(tmp_path / "run")
    full = cam(_folder_cam(tmp_path, "fp32", precision="fp32"))
    half = cam(_folder_cam(tmp_path, "bf16", precision="bf16"))
    differences = []
    for path in sorted(full.glob("*.npz")):
        a, b = read_cam(path), read_cam(half / path.name)
        assert np.array_equal(a["classes"], b["classes"]) and b["scores"].dtype == np.float32
        differences.append(np.abs(a["cams"].astype(np.float32) - b["cams"]).max())
    assert 0 < max(differences) < 0.1  # bf16 keeps 8 bits of mantissa: close, not equal
    recipe = json.loads((half / "manifest.json").read_text())["recipe"]
    assert recipe["precision"] == "bf16"


def test_store_stride_keeps_small_maps_that_every_reader_gets_at_the_image_s_size(
        tmp_path: Path) -> None:
    _mixed_folder(tmp_path)
    _train_tiny(tmp_path / "run")
    full = cam(_folder_cam(tmp_path, "full", store_stride=1))
    small = cam(_folder_cam(tmp_path, "small", store_stride=4))
    for path in sorted(full.glob("*.npz")):
        raw = np.load(small / path.name)
        a, b = read_cam(path), read_cam(small / path.name)
        height, width = a["cams"].shape[1:]
        assert raw["cams"].shape[1:] == (-(-height // 4), -(-width // 4))
        assert tuple(raw["size"]) == (height, width) and "size" not in b
        assert b["cams"].shape == a["cams"].shape and b["cams"].dtype == np.float16
        # smooth maps (stride-16 features) survive a stride of 4 nearly unchanged
        assert np.abs(a["cams"].astype(np.float32) - b["cams"]).mean() < 0.02
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["config"]["store_stride"] == 4 and "store_stride" not in manifest["recipe"]


def test_a_cam_file_whose_size_is_smaller_than_its_maps_is_that_image_s_problem(
        tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    write_npz(path, classes=np.array([0], dtype=np.int16),
              cams=np.zeros((1, 8, 8), dtype=np.float16), scores=np.zeros(3, np.float32),
              image=np.array("a.jpg"), size=np.array([4, 4], dtype=np.int32))
    with pytest.raises(ImageProblem, match="inconsistent CAM file"):
        read_cam(path)


def test_a_folder_made_before_an_option_existed_is_valid_at_its_default(tmp_path: Path
                                                                       ) -> None:
    """Manifests written before --precision lack it: such a folder is resumed as made at its
    default, and refused for another value."""
    _mixed_folder(tmp_path)
    _train_tiny(tmp_path / "run")
    config = _folder_cam(tmp_path, "cam")
    out = cam(config)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["recipe"]["precision"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    cam(config)  # resumes: nothing to redo, no refusal
    with pytest.raises(IgcamError, match="another precision"):
        cam(replace(config, precision="bf16"))
