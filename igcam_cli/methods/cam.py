"""The plain multi-scale CAM every other method starts from (or re-runs on edited images)."""

from __future__ import annotations

import torch

from igcam_cli.models import CamNet
from igcam_cli.transforms import resize, scaled_size


@torch.inference_mode()
def multiscale_cam(model: CamNet, image: torch.Tensor, scales: tuple[float, ...],
                   flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) summed CAMs at image resolution and (C,) class probabilities at scale 1.

    ``image`` is (3, H, W) in [0, 1] on the model's device. Probabilities come from the
    scale-1 (or first) pass so that unlabelled images get their classes for free.
    """
    _, height, width = image.shape
    total = None
    probs = None
    for scale in scales:
        batch = resize(image[None], scaled_size(height, width, scale))
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        batch = batch.contiguous(memory_format=torch.channels_last)
        features = model.features(batch)
        if probs is None or scale == 1.0:
            pooled = features.mean(dim=(2, 3), keepdim=True)
            probs = torch.sigmoid(model.classifier(pooled).flatten(1)).mean(0)
        cams = torch.relu(torch.nn.functional.conv2d(features, model.classifier.weight))
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        cams = resize(cams.float(), (height, width))[0]
        total = cams if total is None else total + cams
    assert total is not None and probs is not None
    return total, probs


def normalise(cams: torch.Tensor) -> torch.Tensor:
    """Divide each class map by its maximum (1e-5 floor, as IRN)."""
    peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-5)
    return cams / peak.view(-1, 1, 1)
