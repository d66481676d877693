"""What a CAM method is: a class with a name, a frozen options dataclass and a per-image call.

Every method refines the maps of the method before it (the base CAM, or the previous one in a
chain ``a+b``): it receives one image and its max-normalised maps of the image's classes and
returns the same classes' maps. Set-up that is done once per ``igcam cam`` call (reading
folders, building prototypes) goes in ``setup()``, which the chain calls once and which sees
only a :class:`MethodContext`, never the step's whole config. The options dataclass declares each
option with :func:`igcam_cli.options.option`; the CLI offers it as ``--<name>-<field>``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from igcam_cli.artifacts import RunDir
from igcam_cli.datasets import Dataset, Sample
from igcam_cli.models import CamNet
from igcam_cli.registry import Part


@dataclass(frozen=True)
class MethodContext:
    """What a method may use besides the image; built once per ``igcam cam`` call."""

    model: CamNet
    device: torch.device
    scales: tuple[float, ...]  # the CAM's scales, which re-runs and other heads reuse
    flip: bool
    dataset: Dataset  # the images being processed (with labels, when known)
    run: RunDir  # where a method finds (or writes) its run-level inputs, e.g. prototypes
    checkpoint: Path  # the classifier file, whose hash keys artifacts built from it
    influence: Path | None  # an ``igcam influence`` folder, when the user gave one
    strict: bool


class CamMethod(Part, abc.ABC):
    """One CAM method; subclasses set ``name`` and ``Options`` and implement ``__call__``.

    A subclass's docstring is its ``--method`` help in ``igcam cam --help``. Set-up done once
    per ``igcam cam`` call goes in ``setup()`` (:class:`~igcam_cli.registry.Part`), which the
    chain calls with ``self.context`` (a :class:`MethodContext`) and ``self.options`` set.
    """

    context: MethodContext
    # The background threshold measured best for this method's maps on voc-real (the default
    # classifier, bench/RESULTS.md), which ``refine`` uses when none is given; None: not
    # measured. Methods differ: LPCAM's maps stand higher on the object than the CAM's.
    threshold: ClassVar[float | None] = None
    # The (foreground, background) thresholds at which this method's maps make confident
    # targets for ``train-aff`` (its maps live on their own scale, like ``threshold``); None:
    # not measured, a chain keeps its previous stage's, else IRN's for the plain CAM.
    target_thresholds: ClassVar[tuple[float, float] | None] = None

    @abc.abstractmethod
    def __call__(self, sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
        """The method's (K, H, W) maps of ``classes`` from the incoming max-normalised ``cams``.

        ``image`` is (3, H, W) in [0, 1] on the model's device; ``cams`` (K, H, W) on it too.
        """
