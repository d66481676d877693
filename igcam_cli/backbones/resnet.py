"""ResNet-50/101, torchvision ImageNet weights: ``--weights``, the weights folder or a download."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from igcam_cli.backbones.base import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
)
from igcam_cli.backbones.weights import load_state_file, weights_dir, weights_manifest


class ResNet(Backbone):
    """torchvision ResNet, layer4 dilated instead of strided (output stride 16)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, depth: int, state: dict[str, torch.Tensor] | None,
                 output_stride: int = 16) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(
            weights=None, replace_stride_with_dilation=[False, False, output_stride == 16],
            norm_layer=FrozenBatchNorm2d)
        if state is not None:
            net.load_state_dict(state)
        self.imagenet_fc = net.fc
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                  net.layer1, net.layer2, net.layer3, net.layer4)
        self.stage_channels = tuple(64 * 2 ** i * net.layer1[0].expansion for i in range(4))
        self.out_channels = self.stage_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of layer1 to layer4."""
        x = self.body[:4](x)
        maps = []
        for layer in self.body[4:]:
            x = layer(x)
            maps.append(x)
        return maps

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.body[0].parameters())

    def last_stage_parameters(self) -> Iterator[nn.Parameter]:
        return self.body[7].parameters()


def _resnet_state(depth: int, weights: Path | None) -> dict[str, torch.Tensor] | None:
    name = f"resnet{depth}"
    if weights is not None:
        return load_state_file(weights, name)
    entry = weights_manifest().get(name, {})
    local = weights_dir() / entry.get("file", f"{name}.pth")
    if local.is_file():
        return load_state_file(local, name)
    import torchvision

    enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
    try:
        return enum.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline machines fail in many ways
        warnings.warn(
            f"{name}: no ImageNet weights ({type(exc).__name__}); put {local.name} in "
            f"{local.parent} (IGCAM_WEIGHTS_DIR picks another folder) or pass --weights FILE. "
            "Training from random init - expect poor CAMs.",
            stacklevel=2)
        return None


def _resnet(depth: int) -> BackboneSpec:
    return BackboneSpec(
        lambda w, pre, os: ResNet(depth, _resnet_state(depth, w) if pre else None, os),
        f"ResNet-{depth}, torchvision ImageNet weights (weights/ folder, --weights or download)",
        default_lr=0.1)  # IRN


for _depth in (50, 101):
    BACKBONES.register(_resnet(_depth), f"resnet{_depth}")
