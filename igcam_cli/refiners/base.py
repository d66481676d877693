"""What a refiner is: one stage of ``igcam refine --method``, from CAM maps towards a mask.

A refiner receives one image's :class:`Maps` (its classes' score maps at full resolution and,
once a stage has decided them, its labels) and returns them changed: ``rw`` and ``par``
replace the scores by propagated ones, ``crf`` decides the labels. Stages chain with ``+``
(``rw+crf``); whatever has no labels at the end gets them from the background threshold.
Set-up done once per ``igcam refine`` call (loading a network) goes in ``setup()``, which the
chain calls once in the process that refines. The
options dataclass declares each option with :func:`igcam_cli.options.option`; the CLI
offers it as ``--<name>-<field>``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from igcam_cli.artifacts import RunDir
from igcam_cli.registry import Part


@dataclass
class Maps:
    """One image on its way through a refine chain."""

    cams: np.ndarray  # (K, H, W) float32 scores of ``classes``, each at most 1
    classes: np.ndarray  # (K,) 0-based class ids
    image: Path  # the source photo
    labels: np.ndarray | None = None  # (H, W) uint8 VOC labels, once a stage set them
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RefineContext:
    """What a refiner may use besides the maps; built once per ``igcam refine`` call."""

    run: RunDir
    device: torch.device
    threshold: float  # the background threshold: best class score at most this is background
    max_side: int  # images larger than this are processed shrunk (0: never)


class Refiner(Part, abc.ABC):
    """One refiner; subclasses set ``name`` and ``Options`` and implement ``__call__``.

    A subclass's docstring is its ``--method`` help in ``igcam refine --help``. Set-up done
    once per ``igcam refine`` call (loading a network) goes in ``setup()``
    (:class:`~igcam_cli.registry.Part`): the chain calls it once in the process that refines,
    in each ``--workers`` process too. One that holds a network sets ``in_process``: it runs
    in the main process (the network loaded once, on the step's ``--device``), not in
    ``--workers`` processes. One that needs a step run first names it in ``needs``
    (``rw``: ``train-aff``), and ``igcam run`` runs that step before it.
    """

    context: RefineContext
    in_process: ClassVar[bool] = False
    sets_labels: ClassVar[bool] = False  # a stage that decides the labels must come last

    def check(self) -> None:  # noqa: B027 - most refiners have nothing to check
        """Fail fast, before any image, in the main process (a missing library, say); no
        set-up here, which the chain does where the refiner runs."""

    @abc.abstractmethod
    def __call__(self, maps: Maps) -> Maps:
        """The image's maps after this stage."""
