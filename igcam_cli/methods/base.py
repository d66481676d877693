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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from igcam_cli.artifacts import RunDir
from igcam_cli.datasets import Dataset, Sample
from igcam_cli.methods.multiscale import multiscale_maps
from igcam_cli.models import CamNet
from igcam_cli.registry import Part
from igcam_cli.transforms import normalise


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


class HeadCam(CamMethod, abc.ABC):
    """A method whose maps are a head's over every scale and flip of the image, as the CAM's
    are (:func:`~igcam_cli.methods.multiscale.multiscale_maps`): the gradient family,
    Eigen-CAM, Score-CAM. It makes the maps of the image's classes from the network itself, so
    in a chain it replaces the incoming maps (put it first: ``gradcampp+lpcam``)."""

    # The head reads the views themselves (Score-CAM masks them), not their feature maps.
    reads_views: ClassVar[bool] = False

    @abc.abstractmethod
    def head(self, classes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """(B, ...) features (or views) of a batch of views -> (B, K, h, w) maps of
        ``classes``, or (B, 1, h, w): one map for them all."""

    def __call__(self, sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
        if not classes:
            return cams
        maps = normalise(multiscale_maps(self.context.model, image, self.context.scales,
                                         self.context.flip, self.head(classes),
                                         (lambda views: views) if self.reads_views else None))
        return maps.expand(len(classes), -1, -1).to(cams.dtype).clone()
