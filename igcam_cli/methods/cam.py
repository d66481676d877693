"""The plain multi-scale CAM every other method starts from (or re-runs on edited images).

With an FPN classifier (``igcam train-cls --fpn``) the CAM is that of several pyramid levels:
each level's ReLU'd CAM through the shared classifier, summed over the scales like the plain
CAM, max-normalised per level and class, and averaged over the levels, or weighted per image and
class by how well each level agrees with the image's spatial influence map (``--fpn-attention
influence``, :func:`level_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.models import FPN_LEVELS, CamNet
from igcam_cli.transforms import resize, scaled_size

if TYPE_CHECKING:
    from igcam_cli.steps.cam import CamConfig

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
        pooled = features.mean(dim=(2, 3), keepdim=True)
        probs.append(torch.sigmoid(model.classifier(pooled).flatten(1)).mean(0))
        return torch.relu(torch.nn.functional.conv2d(features, model.classifier.weight))

    total = multiscale_maps(model, image, scales, flip, cam_head)
    return total, probs[reference_scale(scales)]


def reference_scale(scales: tuple[float, ...]) -> int:
    """Index of the scale whose class probabilities are kept: 1.0, else the first."""
    return scales.index(1.0) if 1.0 in scales else 0


def normalise(cams: torch.Tensor) -> torch.Tensor:
    """Divide each class map by its maximum (1e-5 floor, as IRN)."""
    peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-5)
    return cams / peak.view(-1, 1, 1)


LEVEL_ATTENTION = ("none", "influence")


@dataclass(frozen=True)
class LevelFusionConfig:
    """How ``igcam cam`` fuses the CAMs of an FPN classifier's pyramid levels."""

    levels: tuple[str, ...] = FPN_LEVELS  # which of models.FPN_LEVELS to fuse
    attention: str = "none"  # none: equal weights; influence: per image and class, see below
    temperature: float = 0.1  # influence: softmax temperature over the levels' correlations


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
        return torch.cat([resize(F.relu(F.conv2d(pyramid[i], model.classifier.weight)).float(),
                                 grid) for i in levels], dim=1)

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


def build_cam(model: CamNet, config: CamConfig
              ) -> Callable[[Sample, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The (C, H, W) CAMs and (C,) probabilities of one image: plain, or fused over FPN levels."""
    from igcam_cli.steps.influence import load_influence_map

    fusion = config.fpn
    if model.neck is None:
        if fusion != LevelFusionConfig():
            raise IgcamError("--fpn-levels, --fpn-attention and --fpn-temperature need a "
                             "classifier trained with `igcam train-cls --fpn`")
        return lambda sample, image: multiscale_cam(model, image, config.scales, config.flip)
    if not fusion.levels or not set(fusion.levels) <= set(FPN_LEVELS):
        raise IgcamError(f"--fpn-levels must be a comma list of {', '.join(FPN_LEVELS)}, got "
                         f"{','.join(fusion.levels)!r}")
    if fusion.attention not in LEVEL_ATTENTION:
        raise IgcamError(f"--fpn-attention must be one of {', '.join(LEVEL_ATTENTION)}")
    if fusion.temperature <= 0:
        raise IgcamError("--fpn-temperature must be positive")
    levels = sorted({FPN_LEVELS.index(name) for name in fusion.levels})
    maps_dir = None
    if fusion.attention == "influence":
        if config.influence is None:
            raise IgcamError("--fpn-attention influence needs --influence DIR, the output of "
                             "`igcam influence`")
        maps_dir = config.influence / "maps"
        if not maps_dir.is_dir():
            raise IgcamError(f"{maps_dir} not found (run `igcam influence` first)")

    def compute(sample: Sample, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level_cams, probs = multiscale_level_cams(model, image, config.scales, config.flip,
                                                  levels)
        weights = level_cams.new_full(level_cams.shape[:2], 1 / len(levels))
        if maps_dir is not None:
            path = maps_dir / f"{sample.id}.npz"
            if not path.is_file():
                raise ImageProblem(f"{sample.image}: no influence map in {maps_dir}")
            stored = load_influence_map(path)
            classes = stored["classes"].tolist()  # the labelled classes; others keep the mean
            maps = torch.from_numpy(stored["maps"].astype(np.float32))
            if maps.shape[-2:] != level_cams.shape[-2:]:
                raise ImageProblem(f"{sample.image}: influence map {path} is "
                                   f"{tuple(maps.shape[-2:])}, not the image's size")
            weights[:, classes] = level_weights(level_cams[:, classes], maps,
                                                fusion.temperature)
        return fuse_levels(level_cams, weights), probs

    return compute
