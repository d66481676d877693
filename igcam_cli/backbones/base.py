"""The backbone contract and the registry that maps ``--backbone`` names to builders.

Every backbone returns one stride-16 feature map (the last stage runs at stride 1, as CAM methods
need), has frozen BatchNorm (batches of a few images cannot estimate statistics) and carries
its own input normalisation. A family module builds its networks and registers them in
:data:`BACKBONES` at import time, so the registry is complete once :mod:`igcam_cli.backbones`
is imported.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from igcam_cli.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class Backbone(nn.Module, abc.ABC):
    """A feature extractor: image batch -> stride-16 feature map with ``out_channels`` channels."""

    out_channels: int
    stage_channels: tuple[int, ...]  # channels of each map :meth:`stages` returns
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @abc.abstractmethod
    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map of each stage at strides 4, 8 and 16, then the final map (stride 16).

        Every family ends on the map ``forward`` returns, so an FPN over these reuses the
        backbone exactly as trained without a neck.
        """

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters kept fixed during training (the stem, as in IRN)."""
        return iter(())

    @abc.abstractmethod
    def last_stage_parameters(self) -> Iterator[nn.Parameter]:
        """The last stage (ResNet's layer4): what ``influence --params layer4`` differentiates."""


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[Path | None, bool, int], Backbone]  # (weights, pretrained, output_stride)
    description: str
    default_lr: float  # backbone learning rate of the recipe that suits this family


# In registration order, which is the order error messages and help list the names in.
BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def build_backbone(name: str, weights: Path | None = None, pretrained: bool = True,
                   output_stride: int = 16) -> Backbone:
    """``output_stride`` 16 for CAMs; 32 restores the ImageNet network (used to check weights)."""
    if output_stride not in (16, 32):
        raise ValueError("output_stride must be 16 or 32")
    return BACKBONES[name].build(weights, pretrained, output_stride)


def default_lr(name: str) -> float:
    """The backbone learning rate ``train-cls`` uses when ``--lr`` is not given."""
    return BACKBONES[name].default_lr
