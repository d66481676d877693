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

from dataclasses import dataclass

import torch

from igcam_cli.models import CamNet
from igcam_cli.options import option
from igcam_cli.training.finetune import FineTuningStage
from igcam_cli.training.losses import boundary_loss, consistency_loss


@dataclass(frozen=True)
class Stage2Options:
    """``--stage 2``: the weights of the two CAM terms added to the (influence-weighted)
    classification loss; a weight of 0 leaves its term out."""

    consistency_weight: float = option(
        1.0, "Stage 2: weight of the multi-scale CAM consistency loss (0 turns it off).")
    boundary_weight: float = option(
        0.1, "Stage 2: weight of the boundary-aware (edge-aware smoothness) loss.")
    edge_gamma: float = 10.0  # how sharply an image edge releases the smoothness penalty


class Stage2(FineTuningStage):
    name = "2"
    folder = "stage2"
    Options = Stage2Options
    options: Stage2Options

    def loss(self, model: CamNet, batch: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted classification + consistency + boundary (a zero weight skips its term)."""
        options = self.options
        _, logits, loss, cams = self.weighted_loss(model, batch, target, weight)
        if options.consistency_weight:
            loss = loss + options.consistency_weight * consistency_loss(model, batch, cams, target)
        if options.boundary_weight:
            loss = loss + options.boundary_weight * boundary_loss(batch, cams, target,
                                                                 options.edge_gamma)
        return logits, loss
