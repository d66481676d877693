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
    measured = _last_measured(spec, "threshold")
    return CAM_THRESHOLD if measured is None else measured


# IRN's affinity targets for CAMs: confident foreground above 0.30, background below 0.05.
CAM_TARGETS = (0.30, 0.05)


def _last_measured(spec: str, attribute: str) -> Any:
    """The value of ``attribute`` of the last stage of method ``spec`` that has one (a later
    unmeasured stage reweights its base's maps), else None."""
    for name in reversed(parse_methods(spec)):
        if (value := getattr(METHODS[name], attribute)) is not None:
            return value
    return None


def cams_method(cams: Path) -> str | None:
    """The CAM method that the folder's ``cam`` manifest names, if it is one this version
    knows; None for other maps (a refiner's saved scores, shards not merged, ...)."""
    origin = made_by(cams)
    method = origin.method if origin is not None and origin.step == "cam" else None
    if method is None:
        return None
    try:
        parse_methods(method)
    except IgcamError:
        return None
    return method


def cams_targets(cams: Path) -> tuple[tuple[float, float], str]:
    """The affinity-target thresholds measured for the maps in ``cams`` and where they come
    from; ``train-aff`` takes them when its thresholds are not given."""
    method = cams_method(cams)
    targets = None if method is None else _last_measured(method, "target_thresholds")
    if targets is None:
        return CAM_TARGETS, "IRN's, for CAMs"
    return targets, f"measured for {method}'s maps"


def cams_threshold(cams: Path) -> tuple[float, str]:
    """The threshold measured best for the maps in ``cams`` and where it comes from: the
    method that the folder's ``cam`` manifest names, or the plain CAM's for other maps (a
    refiner's saved scores, a folder whose shards are not merged, a method this version does
    not know). ``refine`` and ``run`` take it when no threshold is given."""
    method = cams_method(cams)
    if method is None:
        return CAM_THRESHOLD, "the CAM's measured best; the maps' method is unknown"
    return measured_threshold(method), f"measured best for {method}'s maps"


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


__all__ = ["CAM_TARGETS", "CAM_THRESHOLD", "METHODS", "CamMethod", "Chain", "MethodContext",
           "cams_method", "cams_targets", "cams_threshold", "measured_threshold", "method_help",
           "parse_methods"]
