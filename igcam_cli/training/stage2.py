"""``--stage 2``, IG-CAM's second stage: the stage-1 classifier fine-tuned into
``RUN/train-cls-stage2/``. Its loss adds to the classification loss, each with its own weight:

- influence re-weighting: each image's classification loss is scaled by
  ``2 sigmoid(-strength * z)``, z its standardised influence on the held-out loss from
  ``igcam influence`` (harmful images count less, helpful ones more, the mean stays near 1);
- multi-scale consistency: the max-normalised CAMs of the batch and of its half-size copy must
  agree (L1 over the labelled classes), which pulls the maps towards scale-stable evidence;
- boundary awareness: CAM gradients are penalised where the image has no edge
  (``|grad CAM| exp(-gamma |grad I|)``), so the maps stop at object boundaries.
"""

from __future__ import annotations

from typing import Protocol

import torch

from igcam_cli.models import CamNet
from igcam_cli.training.finetune import FineTuneSettings, FineTuningStage
from igcam_cli.training.losses import boundary_loss, consistency_loss


class Stage2Settings(FineTuneSettings, Protocol):
    consistency_weight: float
    boundary_weight: float
    edge_gamma: float


class Stage2(FineTuningStage):
    name = "2"
    folder = "stage2"
    config: Stage2Settings

    def loss(self, model: CamNet, batch: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted classification + consistency + boundary (a zero weight skips its term)."""
        config = self.config
        _, logits, loss, cams = self.weighted_loss(model, batch, target, weight)
        if config.consistency_weight:
            loss = loss + config.consistency_weight * consistency_loss(model, batch, cams, target)
        if config.boundary_weight:
            loss = loss + config.boundary_weight * boundary_loss(batch, cams, target,
                                                                 config.edge_gamma)
        return logits, loss
