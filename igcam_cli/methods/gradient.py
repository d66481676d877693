"""What the gradient CAM family shares: the classifier's gradients at its feature map.

Grad-CAM and its relatives weigh the feature map ``A`` (D, h, w) of an image by the gradient
``g = d logit_c / d A`` of a class's logit, each in its own way (:meth:`GradientCam.combine`).
The gradient is taken at the map the classifier reads (``CamNet.features``: the backbone's
last stage, or the fused pyramid of an FPN classifier), through the head alone: the features
come from the same inference pass as the plain CAM's, and only global pooling and the 1x1
classifier are differentiated, so a gradient method costs about what the CAM costs. Every
scale and flip is a view of its own, summed as the CAM's are (:func:`multiscale_maps`).

With igcam's head (global average pooling, then a linear classifier) the gradient is the
class's weight vector divided by ``h * w`` at every position, so Grad-CAM, HiResCAM and
XGrad-CAM give the plain CAM's maps; Grad-CAM++ and LayerCAM reweight it (they keep positive
gradients only); Eigen-CAM and Score-CAM do not use gradients at all. They are here so that
the methods people compare against run on the same classifier, from the same command.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
import torch.nn.functional as F

from igcam_cli.methods.base import HeadCam

EPSILON = 1e-7  # pytorch-grad-cam's, in XGrad-CAM's ratio


def class_gradients(model: torch.nn.Module, features: torch.Tensor, classes: list[int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, D, h, w) feature map as float and the (B, K, D, h, w) gradients of each class's
    logit with respect to it, through the classifier head only.

    Runs where autograd is off (``igcam cam`` maps under ``torch.inference_mode``): the map is
    copied out of inference mode, so that only the head's small graph is built.
    """
    with torch.inference_mode(False), torch.enable_grad():
        activations = features.float().clone().requires_grad_()
        logits = model.logits(activations)
        grads = [torch.autograd.grad(logits[:, c].sum(), activations, retain_graph=True)[0]
                 for c in classes]
    return activations.detach(), torch.stack(grads, dim=1)


class GradientCam(HeadCam):
    """A method of the gradient family: :meth:`combine` says how the gradients weigh the
    feature map."""

    @abc.abstractmethod
    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) maps before ReLU from the (B, 1, D, h, w) feature map and the (B, K, D,
        h, w) gradients of the K classes."""

    def head(self, classes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        def maps(features: torch.Tensor) -> torch.Tensor:
            activations, grads = class_gradients(self.context.model, features, classes)
            return F.relu(self.combine(activations[:, None], grads))
        return maps


def spatial_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over the last two (spatial) dimensions, kept as size-1 dimensions."""
    return tensor.mean(dim=(-2, -1), keepdim=True)


def spatial_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over the last two (spatial) dimensions, kept as size-1 dimensions."""
    return tensor.sum(dim=(-2, -1), keepdim=True)
