"""Faithfulness scores (``igcam eval --faithfulness``): on a hand-built classifier whose class
evidence sits in a known place, the map pointing there must win every score against one
pointing elsewhere; the imputation must be the harmonic fill; the CLI scores a CAM folder
without ground truth and the report shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness import copy_run, igcam, ok, one_line_error
from torch import nn

from igcam_cli.artifacts import RunDir
from igcam_cli.faithfulness import (
    BETTER,
    SCORES,
    FaithfulnessOptions,
    Perturber,
    impute,
    relevance_ranks,
)


class TextureCorners(nn.Module):
    """Class 0's logit rises with the red stripes' contrast in the top-left quadrant, class 1's
    with the blue stripes' in the bottom-right: a texture detector (as CNN features are), whose
    evidence blurring, greying and imputation all remove, and whose place is known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2] // 2, images.shape[-1] // 2
        contrast = (images[..., 1:] - images[..., :-1]).abs()
        red = contrast[:, 0, :h, :w].mean((1, 2))
        blue = contrast[:, 2, h:, w:].mean((1, 2))
        return torch.stack([12 * (red - 0.3), 12 * (blue - 0.3)], 1)


def _scene() -> torch.Tensor:
    image = torch.full((3, 32, 32), 0.5)
    image[0, :16, 0:16:2] = 1.0  # the red stripes
    image[0, :16, 1:16:2] = 0.0
    image[2, 16:, 16::2] = 1.0  # the blue ones
    image[2, 16:, 17::2] = 0.0
    return image


def _map(rows: slice, cols: slice) -> torch.Tensor:
    cam = torch.zeros(32, 32)
    cam[rows, cols] = 1.0
    cam += torch.linspace(0, 0.1, 32 * 32).view(32, 32)  # no ties
    return cam


def test_the_map_on_the_evidence_wins_every_score() -> None:
    perturber = Perturber(TextureCorners().eval(), FaithfulnessOptions(steps=8, batch=5))
    right = _map(slice(0, 16), slice(0, 16))
    wrong = _map(slice(16, 32), slice(0, 16))
    good, bad = perturber.scores(_scene(), torch.stack([right, wrong]), [0, 0])
    for score in SCORES:
        assert (good[score] - bad[score]) * BETTER[score] > 0.05, (score, good, bad)
    # The blue class read with its own map: deletion falls to the grey image's probability.
    (blue,) = perturber.scores(_scene(), _map(slice(16, 32), slice(16, 32))[None], [1])
    assert blue["deletion"] < bad["deletion"]


def test_maps_of_another_size_are_resized_and_scores_are_repeatable() -> None:
    perturber = Perturber(TextureCorners().eval(), FaithfulnessOptions(steps=4))
    small = _map(slice(0, 16), slice(0, 16))[::4, ::4][None]  # 8 x 8
    assert perturber.scores(_scene(), small, [0]) == perturber.scores(_scene(), small, [0])
    assert perturber.scores(_scene(), small[:0], []) == []


def test_relevance_ranks_put_the_highest_first_and_break_ties_in_pixel_order() -> None:
    ranks = relevance_ranks(torch.tensor([[0.2, 0.9], [0.2, 0.5]]))
    assert ranks.tolist() == [[2, 0], [3, 1]]


def test_imputation_is_the_harmonic_fill_and_keeps_known_pixels() -> None:
    ramp = torch.linspace(0, 1, 96).view(1, 1, 1, 96).expand(2, 3, 64, 96).contiguous()
    removed = torch.zeros(2, 1, 64, 96, dtype=torch.bool)
    removed[0, :, 10:50, 20:80] = True  # one wide hole
    removed[1] = torch.rand(1, 64, 96, generator=torch.Generator().manual_seed(1)) < 0.7
    removed[1, :, :, [0, -1]] = False  # borders repeat: the ramp is harmonic with its ends known
    quiet = impute(ramp, removed, 0.0, torch.Generator().manual_seed(0))
    assert (quiet - ramp).abs().max() < 0.01  # a linear ramp is harmonic: restored
    noisy = impute(ramp, removed, 0.05, torch.Generator().manual_seed(0))
    known = ~removed.expand_as(ramp)
    assert torch.equal(noisy[known], ramp[known])
    assert (noisy - quiet)[~known].std() == pytest.approx(0.05, rel=0.2)


def test_bad_percentiles_are_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaithfulnessOptions(percentiles="0.2,1.5").fractions()


def test_eval_faithfulness_scores_a_cam_folder_without_ground_truth(
        cam_run: Path, tmp_path: Path) -> None:
    run = copy_run(cam_run, tmp_path / "run", "train-cls", "cam")
    out = run / "eval" / "faith-cam.json"
    result = igcam("eval", "--faithfulness", "--run", run, "--cams", run / "cam",
                   "--faith-steps", "3", "--faith-max-side", "48", "--device", "cpu",
                   "--out", out)
    ok(result)
    assert "deletion" in result.stderr and "road" in result.stderr  # the table
    report = json.loads(out.read_text())["report"]
    assert report["kind"] == "faithfulness" and report["images"] == 24
    assert report["maps"] >= 24 and report["missing_or_failed"] == 0
    assert set(report["scores"]) == set(SCORES)
    assert all(0 <= report["scores"][s] <= 1 for s in ("deletion", "insertion"))
    # The report shows the scores beside the folder they belong to.
    ok(igcam("report", "--run", run))
    page = RunDir(run).report().read_text()
    assert "insertion" in page and f"{report['scores']['insertion']:.3f}" in page


def test_eval_faithfulness_errors_are_one_line(cam_run: Path, tmp_path: Path) -> None:
    one_line_error(igcam("eval", "--faithfulness", "--cams", cam_run / "cam"), "--run RUN")
    one_line_error(igcam("eval", "--faithfulness", "--run", cam_run, "--pred", cam_run / "cam"),
               "--cams DIR")
    one_line_error(igcam("eval", "--faithfulness", "--run", tmp_path, "--cams", cam_run / "cam"),
               "no classifier")
    one_line_error(igcam("eval", "--faithfulness", "--run", cam_run, "--cams", cam_run / "cam",
                     "--faith-percentiles", "nan"), "between 0 and 1")
