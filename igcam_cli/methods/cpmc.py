"""Classifier-prototype mutual calibration (CPMC, TCSVT 2024): two kinds of CAM correct each other.

A classifier CAM lights up the object's most discriminative part; a prototype CAM (similarity
to the mean feature of the object) covers more of it but also anything that looks alike. Where
the two disagree, each exposes the other's mistakes. Per image, on its stride-16 features
(scale 1, averaged with the flipped pass when ``--flip``), for all K labelled classes at once:

1. **Centred features.** Backbone features are non-negative (ReLU/ReLU6), so any two positions
   share a positive common component and their cosine similarity rarely drops below 0.3, even
   between object and sky. Subtracting the image's mean feature removes that component: the
   cosine then measures what sets positions apart, and background falls below zero.
2. **Affinity-refined classifier CAM.** The incoming maps (the multi-scale CAM, or the previous
   method of a chain) are shrunk to the feature grid and propagated ``iterations`` times with a
   semantic affinity: ``ReLU(cos)^beta`` between positions (each position fully similar to
   itself), row-normalised, as in PSA/AffinityNet. Each position becomes the similarity-weighted
   average of the CAM, so evidence spreads within a feature-alike region and not across
   dissimilar ones; ``beta`` sharpens the affinity so the many weak links to unrelated
   positions do not add up to a blur.
3. **Prototype CAM.** The class prototype is the mean feature where the refined CAM exceeds
   ``threshold``; its map is ``ReLU(cos(feature, prototype))``, max-normalised. Because the
   prototype averages the whole confident region, parts the classifier found weak but that
   resemble it light up.
4. **Mutual calibration.** Where the prototype map is high (> ``threshold``) and exceeds the
   refined classifier map by more than ``margin``, the classifier missed part of the object
   (false negatives): the mean feature of that region is a local prototype whose similarity is
   *added*, completing the object with what its missing parts look like. Where the classifier
   map is high and exceeds the prototype map by ``margin``, the classifier fires on something
   that does not look like the bulk of its confident region (false positives: co-occurring
   context): that region's local prototype's similarity is *subtracted*. A margin rather than
   a 'low' threshold, because the prototype is itself taken from the confident region, false
   positives included, so it rarely drops to zero there. The calibrated map is
   ``(1 - prototype_weight) * classifier + prototype_weight * prototype
   + complete * added - suppress * subtracted``, ReLU'd, upsampled to the image and
   max-normalised.

Measured on ../shared/data/coco128-voc (97 images, a 20-epoch EfficientNet-Lite0 classifier,
input CAM at scales 1.0/0.5 + flip scoring 20.1 seed mIoU): CPMC with these defaults 22.0;
without suppression 22.6, without either correction 22.3, suppression at full weight 20.9,
no affinity propagation 20.6 (suppression at full weight). With a weak classifier the regions
it fires on unlike its prototype are often real object parts, hence the reduced suppression
weight; all differences are within the ~2-point spread of runs quoted in METHODS.md.

The affinity is N x N over the N feature positions (about 1,000 for a 500-px image, 4 MB; a
2,000-px image needs about 250 MB). A class with an all-zero map stays all zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from igcam_cli.datasets import Sample
from igcam_cli.methods.base import CamMethod
from igcam_cli.methods.multiscale import views
from igcam_cli.models import CamNet
from igcam_cli.options import option
from igcam_cli.transforms import normalise, resize


@dataclass(frozen=True)
class CpmcOptions:
    """The affinity that refines the CAM, what counts as confident and as a disagreement, and
    the weights of the four maps in the calibrated one."""

    beta: float = option(
        8.0, "Power of the feature affinity (cosine similarity); higher keeps the CAM from "
             "spreading beyond positions that look alike.", above=0)
    iterations: int = option(
        2, "Affinity propagation steps that refine the CAM before its prototype is taken (0: "
           "none).", min=0)
    threshold: float = option(
        0.5, "A map above this is confident: the refined CAM there gives the class prototype, "
             "and it marks the 'high' side of a disagreement.", above=0, below=1)
    margin: float = option(
        0.3, "How far one map must exceed the other to count as a disagreement: prototype map "
             "above the CAM is a missed object part (added), CAM above the prototype map is "
             "background (subtracted).", min=0, below=1)
    prototype_weight: float = option(
        0.5, "Share of the prototype map, against the refined CAM, in the calibrated map.",
        min=0, max=1)
    complete: float = option(
        1.0, "Weight of the similarity to the object parts the CAM missed, added to complete "
             "the object.", min=0)
    suppress: float = option(
        0.25, "Weight of the similarity to where the CAM fires unlike its prototype, "
              "subtracted to remove background.", min=0)



@torch.inference_mode()
def centred_features(model: CamNet, image: torch.Tensor, flip: bool) -> torch.Tensor:
    """(D, h, w) stride-16 features of ``image`` (3, H, W), minus the image's mean, unit length."""
    features = model.features(views(image[None], 1.0, flip)).float()
    if flip:
        features = (features[:1] + features[1:].flip(-1)) / 2
    features = features[0]
    return F.normalize(features - features.mean(dim=(1, 2), keepdim=True), dim=0)


def affinity(features: torch.Tensor, beta: float) -> torch.Tensor:
    """(N, N) row-stochastic ``ReLU(cos)^beta`` between the N positions of unit ``features``."""
    flat = features.flatten(1)
    similar = (flat.T @ flat).clamp_min(0).pow(beta)
    similar.fill_diagonal_(1.0)  # a position is like itself even where its feature is the mean
    return similar / similar.sum(1, keepdim=True)


def propagate(maps: torch.Tensor, transition: torch.Tensor, iterations: int) -> torch.Tensor:
    """(K, h, w) maps after ``iterations`` similarity-weighted averages over positions."""
    flat = maps.flatten(1)
    for _ in range(iterations):
        flat = flat @ transition.T
    return flat.view_as(maps)


def region_similarity(features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(K, h, w) ``ReLU(cos)`` of every position to the mean feature of each region (K, h, w).

    The mean feature is the region's prototype; an empty region gives a zero map.
    """
    flat = features.flatten(1)
    weights = regions.flatten(1).float()
    prototypes = F.normalize(weights @ flat.T / weights.sum(1, keepdim=True).clamp_min(1), dim=1)
    return (prototypes @ flat).clamp_min(0).view(regions.shape)


def calibrate(features: torch.Tensor, cams: torch.Tensor, config: CpmcOptions) -> torch.Tensor:
    """Calibrated (K, h, w) maps from unit ``features`` (D, h, w) and classifier ``cams``."""
    classifier = normalise(propagate(cams, affinity(features, config.beta), config.iterations))
    prototype = normalise(region_similarity(features, classifier > config.threshold))
    missed = (prototype > config.threshold) & (prototype - classifier > config.margin)
    spurious = (classifier > config.threshold) & (classifier - prototype > config.margin)
    fused = ((1 - config.prototype_weight) * classifier + config.prototype_weight * prototype
             + config.complete * region_similarity(features, missed)
             - config.suppress * region_similarity(features, spurious))
    return fused.clamp_min(0)


@torch.inference_mode()
def cpmc(model: CamNet, image: torch.Tensor, cams: torch.Tensor, config: CpmcOptions,
         flip: bool) -> torch.Tensor:
    """Calibrated max-normalised (K, H, W) maps of ``image`` (3, H, W) from its ``cams``."""
    if len(cams) == 0:
        return cams
    features = centred_features(model, image, flip)
    small = resize(cams[None].float(), tuple(features.shape[1:]))[0]
    calibrated = calibrate(features, small, config)
    return normalise(resize(calibrated[None], tuple(cams.shape[1:]))[0])


class Cpmc(CamMethod):
    """Classifier-prototype mutual calibration: an affinity-refined CAM and a prototype CAM
    correct each other, adding missed parts and removing background."""

    name = "cpmc"
    threshold = 0.30  # seed 38.5 mIoU on voc-real
    Options = CpmcOptions

    def __call__(self, sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
        return cpmc(self.context.model, image, cams, self.options, self.context.flip)
