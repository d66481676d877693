"""CAM methods beyond the plain multi-scale CAM, selected by ``igcam cam --method``.

Each method is a :class:`~igcam_cli.methods.base.CamMethod` subclass in a module of its own,
registered by one line in :data:`METHODS` (a :class:`~igcam_cli.registry.Registry`). Methods
chain with ``+``: ``lpcam+igcam`` feeds LPCAM's maps to the instance-guided fusion as its
base, so a combination is an option, not another code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from igcam_cli.artifacts import made_by
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError
from igcam_cli.methods.base import CamMethod, MethodContext
from igcam_cli.methods.ccam import ClassConditional
from igcam_cli.methods.cpmc import Cpmc
from igcam_cli.methods.eigencam import EigenCam
from igcam_cli.methods.gradcam import GradCam
from igcam_cli.methods.gradcampp import GradCamPlusPlus
from igcam_cli.methods.hirescam import HiResCam
from igcam_cli.methods.igcam import InstanceGuided
from igcam_cli.methods.layercam import LayerCam
from igcam_cli.methods.lpcam import Lpcam
from igcam_cli.methods.scorecam import ScoreCam
from igcam_cli.methods.xgradcam import XGradCam
from igcam_cli.options import parse_chain
from igcam_cli.registry import PartChain, Registry

METHODS: Registry[type[CamMethod]] = Registry("CAM method")
METHODS.register(InstanceGuided)
METHODS.register(Lpcam)
METHODS.register(ClassConditional)
METHODS.register(Cpmc)
METHODS.register(GradCam)
METHODS.register(GradCamPlusPlus)
METHODS.register(XGradCam)
METHODS.register(LayerCam)
METHODS.register(HiResCam)
METHODS.register(EigenCam)
METHODS.register(ScoreCam)


# The plain CAM's best background threshold with the default classifier on voc-real (302
# photos, EfficientNet-Lite0, tuned on them): DenseCRF masks 40.0 / 42.2 / 43.1 mIoU at 0.30 /
# 0.35 / 0.40, the seed sweep's best also 0.40 (bench/RESULTS.md); IRN's 0.15 lost 2 points.
CAM_THRESHOLD = 0.40


def measured_threshold(spec: str) -> float:
    """The background threshold measured best for the maps of method ``spec``: its last stage's
    that has been measured (a later unmeasured stage reweights its base's maps), else the plain
    CAM's. ``refine`` uses it when no threshold is given, so that a user without pixel labels
    gets the threshold that measured best for the method that made the CAMs."""
    for name in reversed(parse_methods(spec)):
        if METHODS[name].threshold is not None:
            return METHODS[name].threshold
    return CAM_THRESHOLD


def cams_threshold(cams: Path) -> tuple[float, str]:
    """The threshold measured best for the maps in ``cams`` and where it comes from: the
    method that the folder's ``cam`` manifest names, or the plain CAM's for other maps (a
    refiner's saved scores, a folder whose shards are not merged, a method this version does
    not know). ``refine`` and ``run`` take it when no threshold is given."""
    origin = made_by(cams)
    method = origin.method if origin is not None and origin.step == "cam" else None
    if method is not None:
        try:
            return measured_threshold(method), f"measured best for {method}'s maps"
        except IgcamError:  # a method this version does not know
            pass
    return CAM_THRESHOLD, "the CAM's measured best; the maps' method is unknown"


def parse_methods(spec: str) -> list[str]:
    """``cam`` -> [], ``lpcam+igcam`` -> ['lpcam', 'igcam']; unknown names are a user error."""
    return parse_chain(spec, METHODS, "cam")


class Chain(PartChain[CamMethod]):
    """Methods applied in turn, each to the maps of the one before; set up on first use, or
    when ``cam`` calls ``setup()`` before its first image so that a method that cannot work
    stops the step before any."""

    def __init__(self, names: list[str], context: MethodContext,
                 options: Mapping[str, Any]) -> None:
        super().__init__(METHODS, names, context, options)

    def __call__(self, sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
        self.setup()
        for stage in self.stages:
            cams = stage(sample, image, cams, classes)
        return cams


def method_help() -> str:
    """The ``--method`` help: one line per registered method."""
    return " ".join(f"{name}: {' '.join((method.__doc__ or '').split())}"
                    for name, method in METHODS.items())


__all__ = ["CAM_THRESHOLD", "METHODS", "CamMethod", "Chain", "MethodContext", "cams_threshold",
           "measured_threshold", "method_help", "parse_methods"]
