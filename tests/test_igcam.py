"""Instance-guided CAM: box evidence completes an object the CAM only half covers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from harness import igcam

from igcam_cli.artifacts import read_cam
from igcam_cli.methods.igcam import GuidanceOptions, box_means, instance_guided, spread


def test_spread_and_box_means_match_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 20, (6, 2, 2), generator=gen)
    boxes = torch.cat([corners.min(1).values, corners.max(1).values + 1], dim=1)  # x1 y1 x2 y2
    weights = torch.rand(6, generator=gen)
    expected = torch.zeros(24, 30)
    for (x1, y1, x2, y2), w in zip(boxes.tolist(), weights, strict=True):
        expected[y1:y2, x1:x2] += w
    torch.testing.assert_close(spread(boxes, weights, 24, 30), expected)
    maps = torch.rand(2, 24, 30, generator=gen)
    means = torch.stack([torch.stack([m[y1:y2, x1:x2].mean() for x1, y1, x2, y2 in boxes.tolist()])
                         for m in maps])
    torch.testing.assert_close(box_means(maps, boxes), means)


class _BrightnessClassifier(torch.nn.Module):
    """Stands in for a trained classifier: class 0 is 'a bright object fills the crop'."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.mean(dim=(1, 2, 3)) - 0.5).mul(20).unsqueeze(1)


def test_box_evidence_covers_the_part_the_cam_missed() -> None:
    image = torch.full((3, 64, 96), 0.1)
    image[:, 16:48, 16:80] = 0.9  # the object: a bright 32 x 64 bar
    cam = torch.zeros(1, 64, 96)
    cam[0, 20:44, 18:40] = 1.0  # the CAM found only its left (discriminative) end
    boxes = torch.tensor([[16, 16, 80, 48],  # the object
                          [0, 0, 96, 64],  # the whole image: mostly background
                          [60, 0, 96, 14],  # background only
                          [10, 10, 86, 54]])  # the object with a margin
    fused = instance_guided(_BrightnessClassifier(), image, cam, [0], boxes,
                            GuidanceOptions(box_scores="crop", crop_size=32, top=2))
    right_end = fused[0, 20:44, 60:78]
    background = torch.cat([fused[0, :10].flatten(), fused[0, 56:].flatten()])
    assert cam[0, 20:44, 60:78].max() == 0  # the plain CAM misses the right end entirely
    assert right_end.min() > 0.3  # the fused map covers it
    assert background.max() < 0.05  # and stays off the background
    assert torch.isclose(fused.max(), torch.tensor(1.0))


def test_igcam_method_through_the_cli(own_run: Path, tiny_voc: Path) -> None:
    assert igcam("propose", "--run", own_run, "--voc", tiny_voc, "--mode", "single"
                 ).returncode == 0
    result = igcam("cam", "--run", own_run, "--voc", tiny_voc, "--method", "igcam",
                   "--scales", "1.0", "--igcam-candidates", "10", "--igcam-crop-size", "32",
                   "--device", "cpu")
    assert result.returncode == 0, result.stderr
    files = sorted((own_run / "cam-igcam").glob("*.npz"))
    assert len(files) == 24
    assert read_cam(files[0])["cams"].shape[1:] == (64, 64)
    # Renormalised: each class map peaks at 1, or is all zero where the two-epoch classifier
    # has no positive evidence for the class (then no box gets any weight either).
    peaks = np.concatenate([m.reshape(len(m), -1).max(axis=1).astype(np.float32)
                            for m in (read_cam(f)["cams"] for f in files)])
    assert np.all(np.isclose(peaks, 1, atol=1e-2) | (peaks == 0)) and (peaks > 0).any()


def test_igcam_without_proposals_is_a_one_line_error(trained_run: Path, tiny_voc: Path,
                                                      tmp_path: Path) -> None:
    result = igcam("cam", "--run", trained_run, "--voc", tiny_voc, "--method", "igcam",
                   "--igcam-proposals", tmp_path / "none", "--device", "cpu")
    assert result.returncode == 2
    assert "igcam propose" in result.stderr.strip().splitlines()[-1]
