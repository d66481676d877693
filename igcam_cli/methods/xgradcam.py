"""XGrad-CAM (Fu et al., 2020): channels weighted by their activation-weighted gradient."""

from __future__ import annotations

import torch

from igcam_cli.methods.gradient import EPSILON, GradientCam, spatial_sum


class XGradCam(GradientCam):
    """XGrad-CAM: each channel weighted by its gradient averaged over its activation."""

    name = "xgradcam"
    # With igcam's pooled linear head its maps are the CAM's (tests/test_gradient_cams.py):
    # the CAM's measured threshold.
    threshold = 0.40

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        weights = spatial_sum(grads * activations) / (spatial_sum(activations) + EPSILON)
        return (weights * activations).sum(dim=2)
