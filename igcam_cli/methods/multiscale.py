"""The multi-scale machinery every CAM method shares, and the base CAM they all start from.

:func:`multiscale_maps` runs a head over every scale (and flip) of an image and sums the
resized maps; the plain CAM (:func:`multiscale_cam`) is that with ``CamNet.cam`` as the head,
and methods re-run it on edited images or swap the head (LPCAM's prototypes).

With an FPN classifier (``igcam train-cls --fpn``) the CAM is that of several pyramid levels:
each level's ReLU'd CAM through the shared classifier, summed over the scales like the plain
CAM, max-normalised per level and class, and averaged over the levels, or weighted per image and
class by how well each level agrees with the image's spatial influence map (``--fpn-attention
influence``, :func:`level_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from igcam_cli.artifacts import influence_maps, read_influence_map
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.models import FPN_LEVELS, CamNet
from igcam_cli.options import option
from igcam_cli.transforms import normalise, resize, scaled_size

# (B, D, h, w) stride-16 features of a batch of views -> (B, M, h, w) maps
Head = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")


def views(image: torch.Tensor, scale: float, flip: bool) -> torch.Tensor:
    """The batch the network sees at one scale: the resized image and, with ``flip``, its mirror."""
    _, height, width = image.shape
    batch = resize(image[None], scaled_size(height, width, scale))
    if flip:
        batch = torch.cat([batch, batch.flip(-1)])
    return batch.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def multiscale_maps(model: CamNet, image: torch.Tensor, scales: tuple[float, ...], flip: bool,
                    head: Callable[[T], torch.Tensor],
                    extract: Callable[[torch.Tensor], T] | None = None) -> torch.Tensor:
    """(M, H, W) sum over scales (and flips) of ``head``'s maps, each resized to the image.

    Every map method shares this loop, so they all see the image the same way and differ only in
    what they compute from the feature map. ``extract`` (default ``model.features``) is what
    ``head`` reads of each batch of views, e.g. ``model.level_features`` for an FPN's levels.
    """
    _, height, width = image.shape
    total = None
    for scale in scales:
        maps = head((extract or model.features)(views(image, scale, flip)))
        if flip:
            maps = maps[:1] + maps[1:].flip(-1)
        maps = resize(maps.float(), (height, width))[0]
        total = maps if total is None else total + maps
    assert total is not None
    return total


@torch.inference_mode()
def multiscale_cam(model: CamNet, image: torch.Tensor, scales: tuple[float, ...],
                   flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) summed CAMs at image resolution and (C,) class probabilities at scale 1.

    ``image`` is (3, H, W) in [0, 1] on the model's device. Probabilities come from the
    scale-1 (or first) pass so that unlabelled images get their classes for free.
    """
    probs: list[torch.Tensor] = []

    def cam_head(features: torch.Tensor) -> torch.Tensor:
        probs.append(torch.sigmoid(model.logits(features)).mean(0))
        return model.cam(features)

    total = multiscale_maps(model, image, scales, flip, cam_head)
    return total, probs[reference_scale(scales)]


def reference_scale(scales: tuple[float, ...]) -> int:
    """Index of the scale whose class probabilities are kept: 1.0, else the first."""
    return scales.index(1.0) if 1.0 in scales else 0


LEVEL_ATTENTION = ("none", "influence")


@dataclass(frozen=True)
class LevelFusionConfig:
    """How ``igcam cam`` fuses the CAMs of an FPN classifier's pyramid levels (``--fpn-*``)."""

    levels: tuple[str, ...] = option(
        FPN_LEVELS, "FPN classifiers: comma list of the pyramid levels whose CAMs are fused: "
                    "s4, s8, s16 (the backbone's stride 4, 8 and 16 stages) and last (its "
                    "dilated last stage, stride 16).")
    attention: str = option(
        "none", "FPN classifiers: none (every level's normalised CAM weighs the same) or "
                "influence (per image and class, a softmax over the levels of how well each "
                "level's CAM correlates with the spatial influence map of --influence).",
        choices=LEVEL_ATTENTION)
    temperature: float = option(
        0.1, "FPN classifiers, --fpn-attention influence: softmax temperature over the levels' "
             "correlations; lower gives the best-agreeing level more weight.", above=0)


@torch.inference_mode()
def multiscale_level_cams(model: CamNet, image: torch.Tensor, scales: tuple[float, ...],
                          flip: bool, levels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, C, H, W) summed CAMs of the FPN levels ``levels`` and (C,) class probabilities.

    ``levels`` index :data:`FPN_LEVELS`, finest first. Each level's CAM is ReLU'd on its own
    before any fusion, so a level that covers the whole object is not cancelled by another's
    negative evidence there. Probabilities are those of the fused features, as the classifier
    was trained.
    """
    probs: list[torch.Tensor] = []

    def level_head(pyramid: list[torch.Tensor]) -> torch.Tensor:
        probs.append(torch.sigmoid(model.logits(model.fuse(pyramid))).mean(0))
        grid = tuple(pyramid[min(levels)].shape[-2:])
        return torch.cat([resize(model.cam(pyramid[i]).float(), grid) for i in levels], dim=1)

    total = multiscale_maps(model, image, scales, flip, level_head, model.level_features)
    return total.unflatten(0, (len(levels), -1)), probs[reference_scale(scales)]


def level_weights(level_cams: torch.Tensor, influence: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """(L, K) softmax over the levels of each level CAM's correlation with the influence map.

    ``level_cams`` (L, K, H, W), ``influence`` (K, H, W). The influence map marks the places
    whose features move the classifier's held-out loss; a level whose CAM lights up the same
    places carries the evidence the classifier uses for that image and class. Pearson
    correlation (centred cosine) rather than overlap, so a level that is bright everywhere
    does not win by covering the influence map too.
    """
    cams = level_cams.flatten(2)
    maps = influence.to(cams).flatten(1)
    corr = F.cosine_similarity(cams - cams.mean(-1, keepdim=True),
                               (maps - maps.mean(-1, keepdim=True))[None], dim=-1)
    return torch.softmax(corr / temperature, dim=0)


def fuse_levels(level_cams: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(K, H, W) sum of the max-normalised level CAMs (L, K, H, W) times ``weights`` (L, K).

    Each level is normalised first: finer levels peak higher, and without it the weights would
    say less about a level's share than its scale does.
    """
    normalised = normalise(level_cams.flatten(0, 1)).view_as(level_cams)
    return (weights[..., None, None] * normalised).sum(0)


def base_cams(model: CamNet, scales: tuple[float, ...], flip: bool, fusion: LevelFusionConfig,
              influence: Path | None
              ) -> Callable[[Sample, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The (C, H, W) CAMs and (C,) probabilities of one image: plain, or fused over FPN levels.

    ``influence`` is an ``igcam influence`` folder, read by ``--fpn-attention influence``.
    """
    if model.neck is None:
        if fusion != LevelFusionConfig():
            raise IgcamError("--fpn-levels, --fpn-attention and --fpn-temperature need a "
                             "classifier trained with `igcam train-cls --fpn`")
        return lambda sample, image: multiscale_cam(model, image, scales, flip)
    if not fusion.levels or not set(fusion.levels) <= set(FPN_LEVELS):
        raise IgcamError(f"--fpn-levels must be a comma list of {', '.join(FPN_LEVELS)}, got "
                         f"{','.join(fusion.levels)!r}")
    levels = sorted({FPN_LEVELS.index(name) for name in fusion.levels})
    maps_dir = None
    if fusion.attention == "influence":
        if influence is None:
            raise IgcamError("--fpn-attention influence needs --influence DIR, the output of "
                             "`igcam influence`")
        maps_dir = influence_maps(influence)

    def compute(sample: Sample, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level_cams, probs = multiscale_level_cams(model, image, scales, flip, levels)
        weights = level_cams.new_full(level_cams.shape[:2], 1 / len(levels))
        if maps_dir is not None:
            path = maps_dir / f"{sample.id}.npz"
            if not path.is_file():
                raise ImageProblem(f"{sample.image}: no influence map in {maps_dir}")
            stored = read_influence_map(path)
            classes = stored["classes"].tolist()  # the labelled classes; others keep the mean
            maps = torch.from_numpy(stored["maps"].astype(np.float32))
            if maps.shape[-2:] != level_cams.shape[-2:]:
                raise ImageProblem(f"{sample.image}: influence map {path} is "
                                   f"{tuple(maps.shape[-2:])}, not the image's size")
            weights[:, classes] = level_weights(level_cams[:, classes], maps,
                                                fusion.temperature)
        return fuse_levels(level_cams, weights), probs

    return compute
