"""Eigen-CAM (Muhammad and Yeasin, 2020): the first principal component of the feature map.

No class enters it: every class of an image gets the same map, which says where the salient
object is, not which it is. The component's sign is arbitrary (pytorch-grad-cam leaves it, so
its maps are sometimes the background's); here it is turned to agree with the map's total
activation, where objects fire.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from igcam_cli.methods.base import HeadCam


def principal_projection(features: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w): each view's feature vectors (centred over positions) projected on their
    first principal direction, signed to correlate with the summed activation."""
    batch, _, height, width = features.shape
    vectors = features.float().flatten(2).transpose(1, 2)  # (B, h*w, D)
    centred = vectors - vectors.mean(dim=1, keepdim=True)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]  # (B, D)
    projection = (centred @ direction[..., None])[..., 0]  # (B, h*w)
    energy = vectors.sum(dim=2)
    agree = ((projection * (energy - energy.mean(dim=1, keepdim=True))).sum(dim=1) >= 0)
    projection = torch.where(agree[:, None], projection, -projection)
    return projection.clamp_min(0).view(batch, 1, height, width)


class EigenCam(HeadCam):
    """Eigen-CAM: the feature map's first principal component, one map for all the image's
    classes (no class information)."""

    name = "eigencam"

    def head(self, classes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        return principal_projection
