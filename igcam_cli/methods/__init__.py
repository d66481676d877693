"""CAM methods beyond the plain multi-scale CAM, selected by ``igcam cam --method``.

Every method is a module here with a ``build(context) -> PerImage`` function. ``build`` runs
once per ``igcam cam`` call and does the method's setup (reading proposals' folder, computing
prototypes, checking options); the returned function maps one image's max-normalised CAMs to
the method's maps. Methods chain with ``+``: ``lpcam+igcam`` feeds LPCAM's maps to the
instance-guided fusion as its base, so a combination is an option, not another code path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from igcam_cli.datasets import Dataset, Sample
from igcam_cli.errors import IgcamError
from igcam_cli.models import CamNet

if TYPE_CHECKING:
    from igcam_cli.steps.cam import CamConfig

# (sample, image (3, H, W) in [0, 1], normalised maps (K, H, W) of ``classes``, classes)
#   -> the method's normalised maps (K, H, W) of the same classes
PerImage = Callable[[Sample, torch.Tensor, torch.Tensor, list[int]], torch.Tensor]

METHODS: dict[str, str] = {  # --method name -> module with build()
    "igcam": "igcam_cli.methods.igcam",
    "lpcam": "igcam_cli.methods.lpcam",
    "ccam": "igcam_cli.methods.ccam",
    "cpmc": "igcam_cli.methods.cpmc",
}


@dataclass
class MethodContext:
    """What a method may use besides the image; built once per ``igcam cam`` call."""

    model: CamNet
    device: torch.device
    config: CamConfig  # the run directory, scales, flip and every method's options
    dataset: Dataset  # the images being processed (with labels, when known)


def parse_methods(spec: str) -> list[str]:
    """``cam`` -> [], ``lpcam+igcam`` -> ['lpcam', 'igcam']; unknown names are a user error."""
    names = [n.strip() for n in spec.split("+") if n.strip() and n.strip() != "cam"]
    unknown = [n for n in names if n not in METHODS]
    if unknown or (not names and spec.strip() != "cam"):
        raise IgcamError(f"--method must be cam, one of {', '.join(METHODS)}, or several "
                         f"joined by '+', got {spec!r}")
    return names


def build_methods(names: list[str], context: MethodContext) -> PerImage | None:
    """Set up each named method and chain them; None for the plain CAM."""
    stages = [importlib.import_module(METHODS[n]).build(context) for n in names]
    if not stages:
        return None

    def chained(sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                classes: list[int]) -> torch.Tensor:
        for stage in stages:
            cams = stage(sample, image, cams, classes)
        return cams

    return chained
