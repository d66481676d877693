"""``--stage self-sup`` ("Exploring Pixel-level Self-supervision for WSSS", Yoon et al.).

It starts from a classifier and writes ``RUN/train-cls-selfsup/``. A frozen copy of the starting
classifier (the SupportNet) guides the trained one (the MainNet); the loss adds to the
classification loss:

- MAM, the multi-scale attentive loss: the MainNet's scale-1 CAMs must match the SupportNet's
  CAMs fused over several scales, weighted by how confident the SupportNet is at each pixel;
- RCM, the regional contrastive loss: MainNet pixel features inside a class's SupportNet CAM region
  (or in the background) are pulled towards that region's mean feature, away from the others'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igcam_cli.errors import IgcamError
from igcam_cli.models import CamNet
from igcam_cli.options import option
from igcam_cli.training.finetune import FineTuningStage
from igcam_cli.training.losses import frozen_copy, mam_loss, rcm_loss, support_cams


@dataclass(frozen=True)
class SelfSupOptions:
    """``--stage self-sup``: weights of RCM and MAM and what the SupportNet's CAMs mark."""

    # InfoNCE starts near log(classes + 1), above the other terms: hence the small weight.
    rcm_weight: float = option(
        0.1, "Self-sup: weight of the regional contrastive loss (0 turns it off).")
    mam_weight: float = option(
        1.0, "Self-sup: weight of the multi-scale attentive loss (0 turns it off).")
    mam_scales: tuple[float, ...] = option(
        (0.5, 1.0, 1.5), "Self-sup: comma-separated scales of the SupportNet CAMs fused into "
                         "the target the MainNet's CAMs must match.")
    rcm_threshold: float = option(
        0.5, "Self-sup: SupportNet CAM above which a pixel is in its class's region.")
    rcm_bg_threshold: float = option(
        0.1, "Self-sup: best labelled SupportNet CAM below which a pixel is background.")
    rcm_temperature: float = option(
        0.1, "Self-sup: temperature of the contrastive (InfoNCE) softmax; lower is sharper.")
    rcm_pixels: int = option(
        128, "Self-sup: pixels drawn per region and batch as contrastive anchors (bounds the "
             "logits' memory).", min=1)

    def __post_init__(self) -> None:
        if not self.mam_scales or min(self.mam_scales) <= 0:
            raise IgcamError(f"--mam-scales must be positive numbers, got {self.mam_scales}")
        if not 0 <= self.rcm_bg_threshold < self.rcm_threshold <= 1:
            raise IgcamError("need 0 <= --rcm-bg-threshold < --rcm-threshold <= 1, got "
                             f"{self.rcm_bg_threshold} and {self.rcm_threshold}")
        if self.rcm_temperature <= 0 or self.rcm_pixels < 1:
            raise IgcamError("--rcm-temperature must be > 0 and --rcm-pixels >= 1")


def selfsup_loss(support: CamNet, batch: torch.Tensor, features: torch.Tensor,
                 cams: torch.Tensor, target: torch.Tensor, options: SelfSupOptions
                 ) -> torch.Tensor:
    """The self-sup stage's addition to the classification loss: weighted MAM + RCM."""
    guide = support_cams(support, batch, options.mam_scales, cams.shape[-2:])
    guide = guide * target[..., None, None]
    return (options.mam_weight * mam_loss(cams, guide, target)
            + options.rcm_weight * rcm_loss(
                features, guide, threshold=options.rcm_threshold,
                bg_threshold=options.rcm_bg_threshold, temperature=options.rcm_temperature,
                pixels=options.rcm_pixels))


class SelfSup(FineTuningStage):
    name = "self-sup"
    folder = "selfsup"
    Options = SelfSupOptions
    options: SelfSupOptions
    support: CamNet

    def prepare(self, model: CamNet) -> None:
        """The SupportNet is the starting classifier: copied before a resume loads newer weights."""
        self.support = frozen_copy(model)

    def loss(self, model: CamNet, batch: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted classification + MAM + RCM against the SupportNet."""
        features, logits, loss, cams = self.weighted_loss(model, batch, target, weight)
        return logits, loss + selfsup_loss(self.support, batch, features, cams, target,
                                           self.options)
