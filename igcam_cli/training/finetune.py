"""What the fine-tuning stages (2, self-sup) share: their start and the weighted class loss."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from igcam_cli.artifacts import RunDir, StepRecord, read_scores
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError
from igcam_cli.models import CamNet, check_classes, load_classifier
from igcam_cli.training.base import StageSettings, Start, TrainingStage


class FineTuneSettings(StageSettings, Protocol):
    init: Path | None
    influence: Path | None
    influence_strength: float


def influence_weights(samples: list[Sample], scores: dict[str, float],
                      strength: float) -> list[float]:
    """``2 sigmoid(-strength * z)`` per sample, z the standardised influence (1 if unscored)."""
    known = np.array([scores[s.id] for s in samples if s.id in scores])
    if len(known) < 2:
        raise IgcamError("--influence scores cover fewer than two training images; run "
                         "`igcam influence` on the same dataset")
    mean, std = known.mean(), known.std() + 1e-12
    return [float(2 / (1 + np.exp(strength * (scores[s.id] - mean) / std)))
            if s.id in scores else 1.0 for s in samples]


class FineTuningStage(TrainingStage):
    """Starts from a trained classifier (``--init``, default stage 1's) and its backbone."""

    # Stages 2 and self-sup fine-tune a converged classifier: at the stage-1 rate the first epoch
    # undoes it (stage 2 on coco128: train mAP 0.99 -> 0.78, seed 23.4 -> 23.2), at a tenth it
    # gains (seed 25.7).
    lr_factor = 0.1
    config: FineTuneSettings

    def start(self, samples: list[Sample], class_names: tuple[str, ...],
              record: StepRecord) -> Start:
        """The checkpoint's model and backbone, with ``--influence`` re-weighting the images."""
        config = self.config
        init = config.init or RunDir(config.run).classifier()
        model, payload = load_classifier(init, torch.device("cpu"))
        check_classes(payload, class_names, init)
        weights = [1.0] * len(samples)
        if config.influence is not None:
            scores = read_scores(RunDir.influence_scores(config.influence))
            weights = influence_weights(samples, scores, config.influence_strength)
        record.extra["sample_weights"] = {"min": min(weights), "max": max(weights)}
        return Start(model, payload["backbone"], weights)

    @staticmethod
    def weighted_loss(model: CamNet, batch: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, logits, influence-weighted classification loss and CAMs of one pass."""
        features = model.features(batch)
        logits = model.logits(features)
        per_sample = F.multilabel_soft_margin_loss(logits, target, reduction="none")
        loss = (per_sample * weight.float()).mean()
        return features, logits, loss, model.cam(features)
