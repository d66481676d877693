"""CPMC: a CAM and its prototype map calibrate each other (complete the object, drop background)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import igcam

from igcam_cli.artifacts import read_cam
from igcam_cli.methods.cpmc import CpmcOptions, affinity, cpmc, propagate
from igcam_cli.models import CamNet

GRID = (8, 12)  # feature grid of a 128 x 192 image at stride 16
OBJECT_LEFT = (slice(2, 7), slice(1, 5))  # the part the CAM finds
OBJECT_RIGHT = (slice(2, 7), slice(5, 8))  # the part it misses, alike in features
CONTEXT = (slice(1, 4), slice(9, 12))  # background the CAM wrongly fires on


def _unit(index: int, dim: int = 8) -> torch.Tensor:
    return F.one_hot(torch.tensor(index), dim).float()


class _FixedFeatures(torch.nn.Module):
    """Stands in for a CamNet whose backbone sees an object, its context and plain background."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        grid = _unit(2).view(8, 1, 1).repeat(1, *GRID)  # background
        grid[:, OBJECT_LEFT[0], OBJECT_LEFT[1]] = _unit(0).view(8, 1, 1)
        grid[:, OBJECT_RIGHT[0], OBJECT_RIGHT[1]] = (0.8 * _unit(0) + 0.6 * _unit(1)
                                                     ).view(8, 1, 1)
        grid[:, CONTEXT[0], CONTEXT[1]] = _unit(3).view(8, 1, 1)
        self.grid = (grid + 0.05 * torch.rand(grid.shape, generator=gen)).clamp_min(0)
        self.classifier = torch.nn.Conv2d(8, 1, 1, bias=False)

    # The CAM and logits exactly as a trained classifier computes them.
    cam = CamNet.cam
    logits = CamNet.logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.grid.expand(len(images), -1, -1, -1)


def _on_image(region: tuple[slice, slice]) -> tuple[slice, slice]:
    return tuple(slice(s.start * 16, s.stop * 16) for s in region)


def test_calibration_completes_the_object_and_drops_the_context() -> None:
    cam = torch.zeros(1, 128, 192)
    cam[0][_on_image(OBJECT_LEFT)] = 1.0
    cam[0][_on_image(CONTEXT)] = 0.8
    image = torch.zeros(3, 128, 192)
    config = CpmcOptions(suppress=1.0)  # full weight, so the suppression shows plainly
    out = cpmc(_FixedFeatures(), image, cam, config, flip=False)[0]

    def inner(region: tuple[slice, slice]) -> torch.Tensor:  # away from upsampling blur
        rows, cols = _on_image(region)
        return out[rows.start + 8:rows.stop - 8, cols.start + 8:cols.stop - 8]

    assert out.max() == 1
    assert cam[0][_on_image(OBJECT_RIGHT)].max() == 0  # the CAM misses the right part...
    assert inner(OBJECT_RIGHT).min() > 0.5  # ...which resembles the found part: now covered
    assert inner(OBJECT_LEFT).min() > 0.7  # the found part stays
    assert cam[0][_on_image(CONTEXT)].min() == 0.8  # the CAM fires on the context...
    assert inner(CONTEXT).max() < 0.1  # ...which looks unlike the object: suppressed
    background = out.clone()
    for region in (OBJECT_LEFT, OBJECT_RIGHT, CONTEXT):
        background[tuple(slice(s.start - 16, s.stop + 16) for s in _on_image(region))] = 0
    assert background.max() < 0.1


def test_affinity_spreads_within_alike_features_only() -> None:
    gen = torch.Generator().manual_seed(1)
    group_a = _unit(0) + 0.1 * torch.rand(6, 8, generator=gen)
    group_b = _unit(1) + 0.1 * torch.rand(6, 8, generator=gen)
    features = torch.cat([group_a, group_b])
    features = F.normalize(features - features.mean(0), dim=1).T.reshape(8, 3, 4)
    transition = affinity(features, beta=8.0)
    torch.testing.assert_close(transition.sum(1), torch.ones(12))
    seed = torch.zeros(1, 3, 4)
    seed.view(-1)[0] = 1.0  # one position of group A
    spread = propagate(seed, transition, iterations=2).view(-1)
    assert spread[1:6].min() > 0.05  # the rest of group A picks it up
    assert spread[6:].max() < 1e-3  # group B does not
    torch.testing.assert_close(propagate(seed, transition, 0), seed)


def test_cpmc_method_through_the_cli(own_run: Path, tiny_voc: Path) -> None:
    result = igcam("cam", "--run", own_run, "--voc", tiny_voc, "--method", "cpmc",
                   "--scales", "1.0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    files = sorted((own_run / "cam-cpmc").glob("*.npz"))
    assert len(files) == 24
    maps = [read_cam(f)["cams"] for f in files]
    assert all(m.shape[1:] == (64, 64) for m in maps)
    peaks = np.concatenate([m.reshape(len(m), -1).max(axis=1).astype(np.float32) for m in maps])
    assert np.all(np.isclose(peaks, 1, atol=1e-2) | (peaks == 0)) and (peaks > 0).any()


def test_cpmc_rejects_a_bad_margin(trained_run: Path, tiny_voc: Path) -> None:
    result = igcam("cam", "--run", trained_run, "--voc", tiny_voc, "--method", "cpmc",
                   "--cpmc-margin", "1.5", "--device", "cpu")
    assert result.returncode == 2
    assert "--cpmc-margin" in result.stderr.strip().splitlines()[-1]
