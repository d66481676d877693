"""What a training stage of ``igcam train-cls`` is: the parts of the recipe that differ by stage.

The epoch loop, the data, checkpointing and the manifest are the same for every stage
(:mod:`igcam_cli.steps.train_cls`); a stage decides where it writes, how fast it learns, where
its model starts and what loss one batch gets. A new stage is one module with a
:class:`TrainingStage` subclass and one entry in :data:`igcam_cli.training.STAGES`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from igcam_cli.artifacts import StepRecord
from igcam_cli.datasets import Sample
from igcam_cli.models import CamNet
from igcam_cli.options import NoOptions, check


class StageSettings(Protocol):
    """The options every stage may read; each stage's module extends it with its own.

    Protocols rather than ``train_cls.TrainConfig`` (which has every option), so that the
    stages never import a step.
    """

    run: Path
    backbone: str


@dataclass
class Start:
    """Where a stage's training starts: the model, the backbone it is, the images' weights."""

    model: CamNet
    backbone: str  # the checkpoint's for fine-tuning stages, whatever --backbone said
    sample_weights: list[float]  # scales each training image's classification loss


class TrainingStage(abc.ABC):
    """One ``--stage`` of ``igcam train-cls``; an instance lives for one training run."""

    name: ClassVar[str]  # the --stage value
    folder: ClassVar[str | None]  # RUN/train-cls-<folder>/, or RUN/train-cls/ when None
    lr_factor: ClassVar[float]  # multiplies the backbone's default learning rate
    # The stage's own options: each field an option() that `igcam train-cls` offers by name.
    Options: ClassVar[type] = NoOptions

    def __init__(self, config: StageSettings, options: Any = None) -> None:
        self.config = config
        self.options = self.Options() if options is None else options
        check(self.options)

    @abc.abstractmethod
    def start(self, samples: list[Sample], class_names: tuple[str, ...],
              record: StepRecord) -> Start:
        """Build the model this stage trains (called right after the run's seed is set)."""

    def prepare(self, model: CamNet) -> None:  # noqa: B027 - a hook most stages leave empty
        """Called once the model is on its device and before an interrupted run resumes."""

    @abc.abstractmethod
    def loss(self, model: CamNet, batch: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's logits (for the train mAP) and its loss."""
