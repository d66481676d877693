"""Grad-CAM++ (Chattopadhyay et al., 2018): positive gradients, each position weighted by how
much of the channel's evidence it carries, as pytorch-grad-cam computes it."""

from __future__ import annotations

import torch

from igcam_cli.methods.gradient import GradientCam, spatial_sum

# pytorch-grad-cam's constant in alpha's denominator. It is not negligible: with a pooled head
# the gradients are about 1e-4 (a weight over h * w), so the squared and cubed terms are far
# below it, and another constant gives other maps (1e-7: correlation 0.95 at worst with the
# reference's on voc-real photos).
EPSILON = 1e-6


class GradCamPlusPlus(GradientCam):
    """Grad-CAM++: channels weighted by their positive gradients, each position by its share
    of the channel's evidence (second- and third-order terms)."""

    name = "gradcampp"
    # Seed 34.0 mIoU on voc-real's 302 photos (the default classifier recipe), 30.6 at the
    # CAM's 0.40: Grad-CAM++'s maps stand higher on the object (bench/RESULTS.md).
    threshold = 0.60

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        squared, cubed = grads.pow(2), grads.pow(3)
        alpha = squared / (2 * squared + spatial_sum(activations) * cubed + EPSILON)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = spatial_sum(grads.clamp_min(0) * alpha)
        return (weights * activations).sum(dim=2)
