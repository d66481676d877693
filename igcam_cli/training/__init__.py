"""The training stages of ``igcam train-cls``, by their ``--stage`` name.

Adding a stage: a module with a :class:`TrainingStage` subclass, and one registry line below.
A stage's options keep their field names on the command line (``--consistency-weight``,
``--rcm-weight``: users' scripts have them), so :data:`STAGES` is not prefixed.
"""

from __future__ import annotations

from igcam_cli.registry import Registry
from igcam_cli.training.base import StageSettings, Start, TrainingStage
from igcam_cli.training.selfsup import SelfSup, SelfSupOptions
from igcam_cli.training.stage1 import Stage1
from igcam_cli.training.stage2 import Stage2

STAGES: Registry[type[TrainingStage]] = Registry("training stage", prefixed=False)
STAGES.register(Stage1)
STAGES.register(Stage2)
STAGES.register(SelfSup)

__all__ = ["STAGES", "SelfSupOptions", "StageSettings", "Start", "TrainingStage"]
