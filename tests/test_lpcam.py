"""LPCAM: prototypes of every part of a class cover what the CAM leaves to the head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness import igcam
from PIL import Image

from igcam_cli.artifacts import RunDir, read_cam
from igcam_cli.datasets import Dataset, Sample
from igcam_cli.errors import IgcamError
from igcam_cli.methods.base import MethodContext
from igcam_cli.methods.lpcam import (
    Lpcam,
    LpcamOptions,
    Reservoir,
    class_vectors,
    cosine_kmeans,
    lpcam_maps,
    make_prototypes,
)
from igcam_cli.methods.multiscale import multiscale_cam
from igcam_cli.models import CamNet
from igcam_cli.transforms import normalise

HEAD, BODY, BACKGROUND = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


class _PartsNet(torch.nn.Module):
    """Stands in for a trained classifier whose stride-16 features are a linear map of colour.

    Red 'head' pixels lie along class 0's weight (CAM 15); green 'body' pixels only weakly (CAM
    3, a fifth of the head's, yet the classifier still calls them class 0 with softmax 0.95);
    blue background lies along neither class.
    """

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Conv2d(4, 2, 1, bias=False)
        self.classifier.weight.data = torch.eye(2, 4).view(2, 4, 1, 1)
        self.register_buffer("colours", torch.tensor(
            [[15.0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 1]]).T)  # (D, RGB)

    # The CAM and logits exactly as a trained classifier computes them.
    cam = CamNet.cam
    logits = CamNet.logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("dc,bchw->bdhw", self.colours, F.avg_pool2d(images, 16))


def _scene(left: int, top: int) -> torch.Tensor:
    """A 96 x 128 image: a 16 x 32 head with a 48 x 32 body to its right, on the 16-px grid."""
    image = torch.tensor(BACKGROUND).view(3, 1, 1).repeat(1, 96, 128)
    image[:, top:top + 32, left:left + 16] = torch.tensor(HEAD).view(3, 1, 1)
    image[:, top:top + 32, left + 16:left + 64] = torch.tensor(BODY).view(3, 1, 1)
    return image


def test_lpcam_covers_the_body_that_the_cam_misses() -> None:
    model = _PartsNet()
    training = [(_scene(left, top), [0]) for left, top in ((0, 0), (32, 16), (64, 48), (16, 64))]
    tensors, report = make_prototypes(model, training, LpcamOptions(k=4, samples=200), flip=True)
    assert report["classes"][0]["class_prototypes"] == 2  # the head and the body
    assert report["classes"][0]["context_prototypes"] == 1  # the background (softmax 0.5)
    assert not report["classes"][0]["fallback"]
    vectors, present = class_vectors(tensors, num_classes=2)
    assert present.tolist() == [True, False]

    image = _scene(48, 32)
    lpcam = lpcam_maps(model, image, vectors[:1], (1.0,), True)[0]
    cam = normalise(multiscale_cam(model, image, (1.0,), True)[0][:1])[0]
    body = torch.zeros(96, 128, dtype=torch.bool)
    body[32:64, 64:112] = True
    near = torch.zeros(96, 128, dtype=torch.bool)
    near[16:80, 32:128] = True  # the object and 16 px around it (bilinear upsampling's reach)
    assert (cam[body] > 0.3).float().mean() < 0.2  # the CAM sees the head only
    assert (lpcam[body] > 0.3).float().mean() > 0.95  # LPCAM covers the body too
    assert lpcam[~near].max() < 0.05  # and stays off the background
    assert torch.isclose(lpcam.max(), torch.tensor(1.0))


def test_cosine_kmeans_recovers_separated_directions() -> None:
    gen = torch.Generator().manual_seed(0)
    truth = F.normalize(torch.randn(3, 16, generator=gen), dim=1)
    scale = 0.5 + 2 * torch.rand(600, 1, generator=gen)  # cosine clusters ignore the length
    points = truth.repeat_interleave(200, 0) * scale + 0.03 * torch.randn(600, 16, generator=gen)
    centres = cosine_kmeans(points, 3, 50, torch.Generator().manual_seed(1))
    similarity = F.normalize(centres, dim=1) @ truth.T
    assert sorted(similarity.argmax(1).tolist()) == [0, 1, 2]
    assert similarity.max(1).values.min() > 0.99
    # Centres are the members' mean raw features (what the classifier scores), not unit vectors.
    torch.testing.assert_close(centres.norm(dim=1).sort().values,
                               torch.stack([scale[i * 200:(i + 1) * 200].mean()
                                            for i in range(3)]).sort().values, atol=0.05, rtol=0)
    # Fewer distinct directions than k: one centre each, no empty clusters.
    same = torch.tensor([[2.0, 0.0, 1.0]]).repeat(50, 1)
    torch.testing.assert_close(cosine_kmeans(same, 5, 10, gen), same[:1])


def test_reservoir_is_bounded_and_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    pool = Reservoir(500, gen)
    ids = torch.arange(20000)
    rows = torch.stack([ids // 100, ids % 100], dim=1).float()  # exact in half precision
    held, start = [], 0
    while start < len(rows):
        size = int(torch.randint(1, 1500, (1,), generator=gen))  # batches above and below 500
        pool.add(rows[start:start + size])
        held.append(pool.held)
        start += size
    assert max(held) == 500 and pool.seen == 20000
    assert pool.rows is not None
    kept = (pool.rows[:, 0].long() * 100 + pool.rows[:, 1].long())
    assert len(kept.unique()) == 500  # a sample without repeats
    counts = torch.bincount(kept // 2000, minlength=10)  # 50 expected in each tenth
    assert counts.min() >= 25 and counts.max() <= 75, counts


def _context(run: Path, checkpoint: Path, dataset: Dataset,
             scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)) -> MethodContext:
    return MethodContext(_PartsNet(), torch.device("cpu"), scales, True, dataset, RunDir(run),
                         checkpoint, None, False)


def test_lpcam_without_labelled_images_is_a_user_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "classifier.pt"
    checkpoint.write_bytes(b"any checkpoint")
    dataset = Dataset([Sample("a", tmp_path / "a.png")], ("x", "y"), [])
    with pytest.raises(IgcamError, match="labelled images"):
        Lpcam(_context(tmp_path, checkpoint, dataset)).setup()


def _labelled_folder(root: Path) -> Dataset:
    """Two scenes saved as PNGs, labelled class 0 of ('object', 'other')."""
    root.mkdir()
    samples = []
    for index, (left, top) in enumerate(((0, 0), (48, 32))):
        pixels = (_scene(left, top) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(root / f"{index}.png")
        samples.append(Sample(str(index), root / f"{index}.png", (0,)))
    return Dataset(samples, ("object", "other"), [])


def test_prototypes_are_rebuilt_or_refused_when_made_otherwise(tmp_path: Path) -> None:
    dataset = _labelled_folder(tmp_path / "images")
    checkpoint = tmp_path / "classifier.pt"
    checkpoint.write_bytes(b"first classifier")
    folder = tmp_path / "run" / "prototypes"

    def build_with(**options: object) -> None:
        Lpcam(_context(tmp_path / "run", checkpoint, dataset, scales=(1.0,)),
              LpcamOptions(**options)).setup()

    def made() -> dict:
        return json.loads((folder / "manifest.json").read_text())

    build_with(k=2)
    first = made()
    assert first["recipe"]["k"] == 2 and first["counts"]["images"] == 2
    build_with(k=2)
    assert made()["created"] == first["created"] and made()["timings"] == first["timings"]
    build_with(k=3)  # other options: the run's own prototypes are rebuilt
    assert made()["recipe"]["k"] == 3
    checkpoint.write_bytes(b"retrained classifier")
    build_with(k=3)
    assert made()["recipe"]["checkpoint_sha256"] != first["recipe"]["checkpoint_sha256"]
    with pytest.raises(IgcamError, match="--lpcam-prototypes"):  # a folder the user named
        build_with(k=4, prototypes=folder)


def test_classes_without_prototypes_keep_their_cam(tmp_path: Path) -> None:
    dataset = _labelled_folder(tmp_path / "images")
    checkpoint = tmp_path / "classifier.pt"
    checkpoint.write_bytes(b"classifier")
    lpcam = Lpcam(_context(tmp_path, checkpoint, dataset, scales=(1.0,)))
    lpcam.setup()  # what the chain does before the first image
    image = _scene(48, 32)
    cams = torch.rand(2, 96, 128)
    maps = lpcam(dataset.samples[1], image, cams, [0, 1])
    torch.testing.assert_close(maps[1], cams[1])  # 'other' was never labelled
    assert maps[0, 40:56, 72:104].min() > 0.9  # the body's inside (edges blend bilinearly)
    assert maps[0, :16].max() < 0.05


def test_lpcam_method_through_the_cli(own_run: Path, tiny_voc: Path) -> None:
    args = ("cam", "--run", own_run, "--voc", tiny_voc, "--method", "lpcam", "--scales",
            "1.0", "--device", "cpu", "--lpcam-k", "4", "--lpcam-samples", "20")
    first = igcam(*args)
    assert first.returncode == 0, first.stderr
    folder = own_run / "prototypes"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["k"] == 4
    one_image = 2 * 4 * 4  # a 64-px image and its flip at stride 16
    bound = 2 * len(manifest["classes"]) * 20 + one_image
    assert 0 < manifest["counts"]["peak_features_held"] <= bound
    assert manifest["counts"]["features_seen"] > bound  # the sampling did bound the memory
    stored = torch.load(folder / "prototypes.pt", weights_only=True)
    assert len(stored["class_prototypes"]) == len(stored["class_ids"]) > 0
    files = sorted((own_run / "cam-lpcam").glob("*.npz"))
    assert len(files) == 24
    maps = [read_cam(f)["cams"] for f in files]
    assert maps[0].shape[1:] == (64, 64)
    peaks = np.concatenate([m.reshape(len(m), -1).max(axis=1).astype(np.float32) for m in maps])
    assert np.all(np.isclose(peaks, 1, atol=1e-2) | (peaks == 0)) and (peaks > 0).any()

    stamp = (folder / "prototypes.pt").stat().st_mtime_ns
    again = igcam(*args, "--overwrite")  # same checkpoint and options: reused, not rebuilt
    assert again.returncode == 0, again.stderr
    assert (folder / "prototypes.pt").stat().st_mtime_ns == stamp
    assert "lpcam: prototypes of" not in again.stderr
    assert "24 written" in again.stderr
