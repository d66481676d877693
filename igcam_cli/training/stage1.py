"""``--stage 1``: the classifier from ImageNet weights, IRN's recipe, into ``RUN/train-cls/``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from igcam_cli.artifacts import StepRecord
from igcam_cli.backbones import build_backbone
from igcam_cli.datasets import Sample, multi_hot
from igcam_cli.models import CamNet
from igcam_cli.training.base import StageSettings, Start, TrainingStage
from igcam_cli.training.losses import pyramid_loss


class Stage1Settings(StageSettings, Protocol):
    weights: Path | None
    fpn: bool
    fpn_channels: int
    head_bias: bool


def prior_logits(samples: list[Sample], num_classes: int) -> torch.Tensor:
    """(C,) logits of each class's label frequency, where a classifier's bias starts.

    Started at zero, the bias learns the prior more slowly than the features turn into a
    constant that states it: the FPN classifier stalls at the prior, the plain one starts late
    (models.CamNet).
    """
    counts = sum((multi_hot(sample.labels, num_classes) for sample in samples),
                 torch.zeros(num_classes))
    frequency = ((counts + 0.5) / (len(samples) + 1)).clamp(1e-3, 1 - 1e-3)
    return torch.logit(frequency)


class Stage1(TrainingStage):
    """A new CamNet on the ImageNet backbone; with an FPN neck, every level is supervised."""

    name = "1"
    folder = None
    lr_factor = 1.0
    config: Stage1Settings

    def start(self, samples: list[Sample], class_names: tuple[str, ...],
              record: StepRecord) -> Start:
        config = self.config
        model = CamNet(build_backbone(config.backbone, config.weights), len(class_names),
                       config.fpn_channels if config.fpn else None, config.head_bias)
        if model.classifier.bias is not None:
            model.classifier.bias.data = prior_logits(samples, len(class_names))
        return Start(model, config.backbone, [1.0] * len(samples))

    def loss(self, model: CamNet, batch: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multilabel soft-margin loss; every image weighs the same in stage 1."""
        if model.neck is not None:
            return pyramid_loss(model, batch, target)
        logits = model(batch)
        return logits, F.multilabel_soft_margin_loss(logits, target)
