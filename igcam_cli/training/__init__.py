"""The training stages of ``igcam train-cls``, by their ``--stage`` name.

Adding a stage: a module with a :class:`TrainingStage` subclass, and its class in the tuple
below.
"""

from __future__ import annotations

from igcam_cli.errors import IgcamError
from igcam_cli.training.base import StageSettings, Start, TrainingStage
from igcam_cli.training.selfsup import SelfSup, SelfSupConfig
from igcam_cli.training.stage1 import Stage1
from igcam_cli.training.stage2 import Stage2

STAGES: dict[str, type[TrainingStage]] = {cls.name: cls for cls in (Stage1, Stage2, SelfSup)}


def stage_class(name: str) -> type[TrainingStage]:
    """The stage called ``name``; anything else is a one-line error naming the valid ones."""
    try:
        return STAGES[name]
    except KeyError:
        raise IgcamError(f"--stage must be one of {', '.join(STAGES)}, got {name!r}") from None


__all__ = ["STAGES", "SelfSupConfig", "StageSettings", "Start", "TrainingStage", "stage_class"]
