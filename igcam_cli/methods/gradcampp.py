"""Grad-CAM++ (Chattopadhyay et al., 2018): positive gradients, each position weighted by how
much of the channel's evidence it carries, as pytorch-grad-cam computes it."""

from __future__ import annotations

import torch

from igcam_cli.methods.gradient import EPSILON, GradientCam, spatial_sum


class GradCamPlusPlus(GradientCam):
    """Grad-CAM++: channels weighted by their positive gradients, each position by its share
    of the channel's evidence (second- and third-order terms)."""

    name = "gradcampp"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        squared, cubed = grads.pow(2), grads.pow(3)
        alpha = squared / (2 * squared + spatial_sum(activations) * cubed + EPSILON)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = spatial_sum(grads.clamp_min(0) * alpha)
        return (weights * activations).sum(dim=2)
