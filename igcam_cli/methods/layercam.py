"""LayerCAM (Jiang et al., 2021): every position weighted by its own positive gradient."""

from __future__ import annotations

import torch

from igcam_cli.methods.gradient import GradientCam


class LayerCam(GradientCam):
    """LayerCAM: each position of each channel weighted by its own positive gradient."""

    name = "layercam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (grads.clamp_min(0) * activations).sum(dim=2)
