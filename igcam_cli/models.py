"""The CAM classifier (:class:`CamNet`) over a backbone, and its checkpoints.

``CamNet(..., fpn_channels=N)`` adds a feature pyramid neck (IG-CAM's multi-scale branch) over
the backbone's stride 4, 8 and 16 stages and its dilated last stage, see :class:`CamNet`.
Backbones and their weights live in :mod:`igcam_cli.backbones`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from igcam_cli.artifacts import read_checkpoint
from igcam_cli.backbones import Backbone, build_backbone
from igcam_cli.errors import IgcamError

CHECKPOINT_FORMAT = "igcam-classifier/1"
# The pyramid levels, finest first: strides 4, 8 and 16, then the last stage (dilated, stride 16).
FPN_LEVELS = ("s4", "s8", "s16", "last")


class CamNet(nn.Module):
    """Backbone + global average pooling + 1x1 classifier (bias-free without a neck): CAM.

    With ``fpn_channels`` a :class:`torchvision.ops.FeaturePyramidNetwork` neck turns the
    backbone's :meth:`Backbone.stages` into four levels of ``fpn_channels`` channels
    (:data:`FPN_LEVELS`), and :meth:`features` is their mean on the stride-16 grid (finer levels
    area-averaged onto it). The neck's convs are GroupNorm'ed (per image, so batches of a few
    crops do not matter): EfficientNet's stage ends are unnormalised linear bottlenecks (RMS
    about 8), and without a norm the neck diverged on the demo data even at a tenth of the
    backbone rate, with it train mAP reached 0.97 in 6 epochs (96-px crops). The classifier is
    shared by every level and linear, so the CAM of the fused features is the mean of the level
    CAMs before ReLU, and every other part of the tool (influence, proposals' RoI scores, ...)
    keeps reading one stride-16 map.

    With a neck (or ``head_bias``) the classifier has a bias (in the logits only; CAMs use its
    weights alone), started at the label prior (``training.stage1.prior_logits``). A bias-free head
    can state the prior (logits near -3.4 on coco128) only through a constant feature
    direction, and GroupNorm gives each group a fixed energy, so on coco128 the neck grew that
    constant until little else was left: after 4 epochs the pooled features' mean had norm 11
    and their spread between images 0.1-0.3 (2.6 at the start), every image got the same
    logits and train mAP stayed at the prior's 0.1. A bias started at zero did not help (it
    learns the prior more slowly than the neck does); started at the prior, train mAP was 0.42
    after 2 epochs. The plain classifier trains without it (its post-activation features carry
    a constant of their own), but faster and to better maps with it, ``head_bias``: seed mIoU
    29.1 against 23.4 on coco128 (bench/RESULTS.md).

    Cost on a CPU: the stride-4 level's 3x3 output conv takes ``9 N^2 HW / 16`` multiply-adds,
    2.4 G at N = 128 on a 512 crop, about one more EfficientNet-Lite0 pass; torchvision's
    detection default N = 256 would be four times that, hence ``--fpn-channels 128``. The fused
    grid stays at stride 16 rather than 8 for the same reason downstream: a stride-8 map holds
    four times the locations that influence maps, feature banks and the training backward pass
    must carry, while ``igcam cam`` gets the fine levels' detail anyway by resizing each level's
    CAM to the image (:meth:`level_features`).
    """

    def __init__(self, backbone: Backbone, num_classes: int,
                 fpn_channels: int | None = None, head_bias: bool | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn_channels = fpn_channels
        self.neck = None if fpn_channels is None else FeaturePyramidNetwork(
            list(backbone.stage_channels), fpn_channels,
            norm_layer=partial(nn.GroupNorm, math.gcd(16, fpn_channels)))
        self.classifier = nn.Conv2d(
            fpn_channels or backbone.out_channels, num_classes, 1,
            bias=fpn_channels is not None if head_bias is None else head_bias)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` are float RGB in [0, 1], shape (B, 3, H, W)."""
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The stride-16 map the classifier applies to (the fused pyramid with a neck)."""
        if self.neck is None:
            return self.backbone(self.normalize(images))
        return self.fuse(self.level_features(images))

    def level_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The neck's maps, one per :data:`FPN_LEVELS` entry, finest (stride 4) first."""
        if self.neck is None:
            raise ValueError("level_features needs a model built with fpn_channels")
        stages = self.backbone.stages(self.normalize(images))
        return list(self.neck(dict(zip(FPN_LEVELS, stages, strict=True))).values())

    @staticmethod
    def fuse(levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean of the level maps, each area-averaged onto the grid of the coarsest one."""
        grid = levels[-1].shape[-2:]
        return torch.stack([F.adaptive_avg_pool2d(level, grid) for level in levels]).mean(0)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Multi-label logits (B, C) of a feature map: global average pooling, then the head."""
        return self.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-label logits (B, C)."""
        return self.logits(self.features(images))

    def pyramid_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of the fused features and of each level, from one pass (deep supervision)."""
        levels = self.level_features(images)
        return self.logits(self.fuse(levels)), [self.logits(level) for level in levels]

    def cam(self, features: torch.Tensor, classes: Sequence[int] | None = None) -> torch.Tensor:
        """Class activation maps (B, C, h, w) of a feature map, ReLU'd, unnormalised.

        The one place the CAM formula lives: the classifier's weights as a 1x1 convolution,
        without its bias (a bias is a per-class constant that says nothing about where).
        ``classes`` restricts the maps to those rows of the classifier.
        """
        weight = self.classifier.weight if classes is None else self.classifier.weight[classes]
        return F.relu(F.conv2d(features, weight.to(features.dtype)))

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict]:
        """The backbone at ``lr``, the new classifier and FPN neck at ``lr * head_lr_mult``.

        A randomly initialised neck stands between the pretrained features and the classifier,
        so the classifier can only learn as fast as the neck does. At the backbone rate the
        FPN classifier sat at the label prior on coco128 (train mAP 0.10 after 8 epochs, where
        the plain classifier had 0.54); with the stage maps of the frozen backbone cached, the
        neck at the head rate reached train mAP 0.88 in 8 epochs against 0.79 at the backbone
        rate (bench/RESULTS.md, issue 3).
        """
        frozen = {id(p) for p in self.backbone.frozen_parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) not in frozen)
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        new = list(self.classifier.parameters())
        if self.neck is not None:
            new += list(self.neck.parameters())
        return [{"params": body, "lr": lr, "weight_decay": weight_decay},
                {"params": new, "lr": lr * head_lr_mult, "weight_decay": weight_decay}]


def save_checkpoint_payload(model: CamNet, backbone: str, class_names: tuple[str, ...],
                            **extra: object) -> dict:
    """What a classifier checkpoint holds; only tensors and plain types (weights_only-safe)."""
    return {"format": CHECKPOINT_FORMAT, "backbone": backbone, "class_names": list(class_names),
            "fpn_channels": model.fpn_channels, "model": model.state_dict(), **extra}


def load_classifier(path: Path, device: torch.device) -> tuple[CamNet, dict]:
    """Rebuild a trained classifier from an igcam checkpoint without unpickling code."""
    payload = read_checkpoint(path, CHECKPOINT_FORMAT, "classifier checkpoint", "train-cls")
    try:
        backbone = build_backbone(payload["backbone"], pretrained=False)
        # Checkpoints written before the FPN neck existed have no "fpn_channels": plain models.
        model = CamNet(backbone, len(payload["class_names"]), payload.get("fpn_channels"),
                       head_bias="classifier.bias" in payload["model"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as exc:  # a damaged or edited checkpoint
        raise IgcamError(f"checkpoint {path} is damaged: {type(exc).__name__} "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return model.to(device).eval(), payload


def check_classes(payload: dict, class_names: tuple[str, ...], path: Path) -> None:
    """A checkpoint only makes sense for the class list it was trained on."""
    trained = tuple(payload["class_names"])
    if trained != class_names:
        raise IgcamError(f"{path} was trained on classes {list(trained[:3])}… but the dataset "
                         f"uses {list(class_names[:3])}…; pass the same --classes file")
