"""Stage-2 training: influence re-weighting, consistency and boundary losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness import TRAIN, igcam

from igcam_cli.artifacts import sha256_file
from igcam_cli.datasets import Sample
from igcam_cli.training.finetune import influence_weights
from igcam_cli.training.losses import boundary_loss


def test_influence_weights_downweight_harmful_images() -> None:
    samples = [Sample(id=f"im{i}", image=Path(f"im{i}.jpg"), labels=(0,)) for i in range(5)]
    scores = {"im0": -2.0, "im1": -1.0, "im2": 0.0, "im3": 1.0, "im4": 2.0}
    weights = influence_weights(samples, scores, strength=1.0)
    assert weights == sorted(weights, reverse=True)  # more harmful, less weight
    assert abs(sum(weights) / len(weights) - 1) < 1e-6 and all(0 < w < 2 for w in weights)
    unscored = Sample(id="new", image=Path("new.jpg"), labels=(0,))
    assert influence_weights([*samples, unscored], scores, 1.0)[-1] == 1.0


def test_boundary_loss_prefers_maps_that_stop_at_image_edges() -> None:
    image = torch.zeros(1, 3, 32, 32)
    image[..., :, 16:] = 1.0  # one vertical edge at x = 16
    aligned = torch.zeros(1, 1, 32, 32)
    aligned[..., :, 16:] = 1.0
    crossing = torch.zeros(1, 1, 32, 32)
    crossing[..., 16:, :] = 1.0  # a horizontal step where the image is flat
    target = torch.ones(1, 1)
    assert boundary_loss(image, aligned, target, 10.0) < 0.1 * boundary_loss(
        image, crossing, target, 10.0)


@pytest.mark.slow
def test_stage2_fine_tunes_into_its_own_folder(own_run: Path, tiny_voc: Path) -> None:
    assert igcam("influence", "--run", own_run, "--voc", tiny_voc, "--no-maps",
                 "--device", "cpu").returncode == 0
    stage1 = own_run / "train-cls" / "classifier.pt"
    before = sha256_file(stage1)
    assert TRAIN[:2] == ("--epochs", "2")
    result = igcam("train-cls", "--run", own_run, "--voc", tiny_voc, *TRAIN[2:],
                   "--epochs", "1", "--stage", "2", "--influence", own_run / "influence")
    assert result.returncode == 0, result.stderr
    folder = own_run / "train-cls-stage2"
    assert (folder / "classifier.pt").is_file() and sha256_file(stage1) == before
    manifest = json.loads((folder / "manifest.json").read_text())
    weights = manifest["sample_weights"]
    assert weights["min"] < 1 < weights["max"]
    assert manifest["config"]["stage"] == "2"
