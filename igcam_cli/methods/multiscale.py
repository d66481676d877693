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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from igcam_cli.artifacts import RunDir, influence_maps, read_influence_map
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.models import FPN_LEVELS, CamNet
from igcam_cli.options import option
from igcam_cli.transforms import normalise, resize, scaled_size

# (B, D, h, w) stride-16 features of a batch of views -> (B, M, h, w) maps
Head = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")


def views(images: torch.Tensor, scale: float, flip: bool) -> torch.Tensor:
    """The batch the network sees at one scale: the (N, 3, H, W) images resized and, with
    ``flip``, their mirrors after them (2N views)."""
    height, width = images.shape[-2:]
    batch = resize(images, scaled_size(height, width, scale))
    if flip:
        batch = torch.cat([batch, batch.flip(-1)])
    return batch.contiguous(memory_format=torch.channels_last)


def per_image(maps: torch.Tensor, count: int, flip: bool) -> torch.Tensor:
    """(N, ...) each image's maps (or scores) summed with its mirror's, flipped back: the
    inverse of :func:`views`' stacking. ``maps`` is (N or 2N, ...)."""
    if not flip:
        return maps
    mirrored = maps[count:]
    return maps[:count] + (mirrored.flip(-1) if maps.dim() == 4 else mirrored)


@torch.inference_mode()
def multiscale_batch(model: CamNet, images: torch.Tensor, scales: tuple[float, ...], flip: bool,
                     head: Callable[[T], torch.Tensor],
                     extract: Callable[[torch.Tensor], T] | None = None,
                     rows: Callable[[int], Sequence[int] | None] | None = None
                     ) -> list[torch.Tensor]:
    """Per image of the (N, 3, H, W) batch, the (M, H, W) sum over scales (and flips) of
    ``head``'s maps, each resized to the image.

    Every map method shares this loop, so they all see an image the same way and differ only
    in what they compute from the feature map. ``extract`` (default ``model.features``) is
    what ``head`` reads of each batch of views, e.g. ``model.level_features`` for an FPN's
    levels. Images of one size share each scale's forward pass (the features of a view do not
    depend on the others in its batch, up to float rounding). The head's maps are small
    (stride 16) and kept until every scale has run, so that ``rows(i)`` (called then, when
    the head may have seen what it needs, e.g. the class scores) can name the only rows of
    image ``i`` worth enlarging to the image; None keeps all. Enlarging is the costly part
    once the network is fast, and an image keeps one or two of its twenty class maps.
    """
    count, (height, width) = len(images), images.shape[-2:]
    small = []
    for scale in scales:
        maps = head((extract or model.features)(views(images, scale, flip)))
        small.append(per_image(maps, count, flip).float())
    totals = []
    for i in range(count):
        keep = None if rows is None else list(rows(i))
        if keep == []:
            totals.append(small[0].new_zeros((0, height, width)))
            continue
        total = None
        for maps in small:
            picked = maps[i : i + 1] if keep is None else maps[i : i + 1, keep]
            resized = resize(picked, (height, width))[0]
            total = resized if total is None else total + resized
        assert total is not None
        totals.append(total)
    return totals


def multiscale_maps(model: CamNet, image: torch.Tensor, scales: tuple[float, ...], flip: bool,
                    head: Callable[[T], torch.Tensor],
                    extract: Callable[[torch.Tensor], T] | None = None) -> torch.Tensor:
    """(M, H, W) :func:`multiscale_batch` of one (3, H, W) image, every row of the head."""
    return multiscale_batch(model, image[None], scales, flip, head, extract)[0]


# (index of an image in its batch, its (C,) class probabilities) -> the classes it keeps.
Keep = Callable[[int, torch.Tensor], list[int]]
# Per image of a batch: its kept classes, their maps and its (C,) class probabilities.
Kept = list[tuple[list[int], torch.Tensor, torch.Tensor]]


def scored_head(model: CamNet, probs: list[torch.Tensor], count: int, flip: bool,
                maps: Callable[[T], torch.Tensor], features: Callable[[T], torch.Tensor]
                ) -> Callable[[T], torch.Tensor]:
    """A head that also records each image's (C,) class probabilities (mean over its views)
    in ``probs``, one (N, C) entry per scale, before returning ``maps`` of what it reads."""
    def head(extracted: T) -> torch.Tensor:
        scores = torch.sigmoid(model.logits(features(extracted)))
        probs.append(per_image(scores, count, flip) / (2 if flip else 1))
        return maps(extracted)

    return head


@torch.inference_mode()
def multiscale_cams(model: CamNet, images: torch.Tensor, scales: tuple[float, ...], flip: bool,
                    keep: Keep | None = None) -> Kept:
    """Per image of the (N, 3, H, W) batch: its kept classes, their (K, H, W) summed CAMs at
    image resolution and the (C,) class probabilities at scale 1.

    ``keep`` (default: every class) chooses the classes from the probabilities; only their
    maps are enlarged. Probabilities come from the scale-1 (or first) pass so that unlabelled
    images get their classes for free.
    """
    probs: list[torch.Tensor] = []
    head = scored_head(model, probs, len(images), flip, model.cam, lambda f: f)
    chosen: list[list[int]] = []

    def rows(i: int) -> list[int]:
        classes = (keep or all_classes)(i, probs[reference_scale(scales)][i])
        chosen.append(classes)
        return classes

    totals = multiscale_batch(model, images, scales, flip, head, rows=rows)
    return [(classes, total, probs[reference_scale(scales)][i])
            for i, (classes, total) in enumerate(zip(chosen, totals, strict=True))]


def all_classes(index: int, probs: torch.Tensor) -> list[int]:
    """The :data:`Keep` that keeps every class."""
    return list(range(len(probs)))


def multiscale_cam(model: CamNet, image: torch.Tensor, scales: tuple[float, ...],
                   flip: bool, classes: Sequence[int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) summed CAMs of one (3, H, W) image at its resolution, or (K, H, W) of
    ``classes`` alone, and its (C,) class probabilities at scale 1."""
    keep = None if classes is None else (lambda i, probs: list(classes))
    [(_, total, probs)] = multiscale_cams(model, image[None], scales, flip, keep)
    return total, probs


def reference_scale(scales: tuple[float, ...]) -> int:
    """Index of the scale whose class probabilities are kept: 1.0, else the first."""
    return scales.index(1.0) if 1.0 in scales else 0


LEVEL_ATTENTION = ("none", "influence")


@dataclass(frozen=True)
class LevelFusionOptions:
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
def multiscale_level_cams(model: CamNet, images: torch.Tensor, scales: tuple[float, ...],
                          flip: bool, levels: list[int], keep: Keep | None = None) -> Kept:
    """Per image of the (N, 3, H, W) batch: its kept classes, the (L, K, H, W) summed CAMs of
    the FPN levels ``levels`` for them, and the (C,) class probabilities.

    ``levels`` index :data:`FPN_LEVELS`, finest first. Each level's CAM is ReLU'd on its own
    before any fusion, so a level that covers the whole object is not cancelled by another's
    negative evidence there. Probabilities are those of the fused features, as the classifier
    was trained.
    """
    probs: list[torch.Tensor] = []

    def level_maps(pyramid: list[torch.Tensor]) -> torch.Tensor:
        grid = tuple(pyramid[min(levels)].shape[-2:])
        return torch.cat([resize(model.cam(pyramid[i]).float(), grid) for i in levels], dim=1)

    head = scored_head(model, probs, len(images), flip, level_maps, model.fuse)
    chosen: list[list[int]] = []
    width = model.classifier.out_channels

    def rows(i: int) -> list[int]:
        classes = (keep or all_classes)(i, probs[reference_scale(scales)][i])
        chosen.append(classes)
        return [level * width + c for level in range(len(levels)) for c in classes]

    totals = multiscale_batch(model, images, scales, flip, head, model.level_features, rows)
    return [(classes, total.unflatten(0, (len(levels), -1)), probs[reference_scale(scales)][i])
            for i, (classes, total) in enumerate(zip(chosen, totals, strict=True))]


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


# (samples, their (N, 3, H, W) images of one size, each sample's classes from its scores)
BaseCams = Callable[[list[Sample], torch.Tensor, Callable[[Sample, torch.Tensor], list[int]]],
                    Kept]


def base_cams(model: CamNet, scales: tuple[float, ...], flip: bool, fusion: LevelFusionOptions,
              influence: Path | None) -> BaseCams:
    """The kept classes, their (K, H, W) CAMs and the (C,) probabilities of each image of a
    batch: plain, or fused over FPN levels.

    ``influence`` is an ``igcam influence`` folder, read by ``--fpn-attention influence``.
    """
    if model.neck is None:
        if fusion != LevelFusionOptions():
            raise IgcamError("--fpn-levels, --fpn-attention and --fpn-temperature need a "
                             "classifier trained with `igcam train-cls --fpn`")
        return lambda samples, images, keep: multiscale_cams(
            model, images, scales, flip, lambda i, probs: keep(samples[i], probs))
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

    def fused(sample: Sample, classes: list[int], level_cams: torch.Tensor) -> torch.Tensor:
        weights = level_cams.new_full(level_cams.shape[:2], 1 / len(levels))
        if maps_dir is not None and classes:
            path = RunDir.image_maps(maps_dir, sample.id)
            if not path.is_file():
                raise ImageProblem(f"{sample.image}: no influence map in {maps_dir}")
            stored = read_influence_map(path)
            maps = torch.from_numpy(stored["maps"].astype(np.float32))
            if maps.shape[-2:] != level_cams.shape[-2:]:
                raise ImageProblem(f"{sample.image}: influence map {path} is "
                                   f"{tuple(maps.shape[-2:])}, not the image's size")
            # The classes the map was made for (the labelled ones); the others keep the mean.
            pairs = [(k, j) for j, c in enumerate(stored["classes"].tolist())
                     if c in classes for k in [classes.index(c)]]
            if pairs:
                ks, js = (list(side) for side in zip(*pairs, strict=True))
                weights[:, ks] = level_weights(level_cams[:, ks], maps[js], fusion.temperature)
        return fuse_levels(level_cams, weights)

    def compute(samples: list[Sample], images: torch.Tensor,
                keep: Callable[[Sample, torch.Tensor], list[int]]) -> Kept:
        kept = multiscale_level_cams(model, images, scales, flip, levels,
                                     lambda i, probs: keep(samples[i], probs))
        return [(classes, fused(sample, classes, level_cams), probs)
                for sample, (classes, level_cams, probs) in zip(samples, kept, strict=True)]

    return compute
