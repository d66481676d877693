"""HiResCAM (Draelos and Carin, 2020): the gradient times the activation, position by
position, summed over channels."""

from __future__ import annotations

import torch

from igcam_cli.methods.gradient import GradientCam


class HiResCam(GradientCam):
    """HiResCAM: gradient times activation at each position, summed over channels."""

    name = "hirescam"
    # With igcam's pooled linear head its maps are the CAM's (tests/test_gradient_cams.py):
    # the CAM's measured threshold.
    threshold = 0.40

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (grads * activations).sum(dim=2)
