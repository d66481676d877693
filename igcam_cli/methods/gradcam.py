"""Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient."""

from __future__ import annotations

import torch

from igcam_cli.methods.gradient import GradientCam, spatial_mean


class GradCam(GradientCam):
    """Grad-CAM: the feature map weighted by each channel's mean gradient (the plain CAM's
    maps on igcam's pooled linear head)."""

    name = "gradcam"
    # With igcam's pooled linear head its maps are the CAM's (tests/test_gradient_cams.py):
    # the CAM's measured threshold.
    threshold = 0.40

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (spatial_mean(grads) * activations).sum(dim=2)
