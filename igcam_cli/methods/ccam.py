"""Class-conditional inference (Sun, Zhang and Barnes, WACV 2022): more coverage, no retraining.

A classifier's CAM peaks on an object's most discriminative part; after max-normalisation the
rest of the object stays under any useful threshold. Two inference-time steps recover it:

- **Hiding.** Per labelled class, fill the pixels its map already covers (above
  ``fill_threshold``) with the image's mean colour and run the multi-scale CAM again: with the
  strongest part gone, the next-strongest evidence of the class becomes the peak. The re-run's
  map outside the hidden area is max-normalised there and merged into the class's map by a
  pixel-wise max; repeat for at most ``rounds`` passes, and stop a class early once a pass adds
  less than ``min_gain`` of the image to its hidden area (nothing new is left to find), or
  once the classifier's probability for the class on the hidden image falls under
  ``min_score``: what is left is then not the class, and normalising that pass to its own peak
  would stretch the background's faint response to 1.
  Max rather than sum: every pass is normalised to its own peak, so the max keeps all passes
  on the 0..1 scale of the first map, leaves regions already found as they were, and cannot
  let several weak passes add up to a false peak (the reference code merges the same way).
- **Crops.** Cut the image into four corner crops that meet at the labelled classes' centres
  of mass, each reaching ``crop_margin`` past them so that every crop holds a share of each
  object; zoom each crop to ``crop_size`` and take its multi-scale CAM, max-normalised within
  the crop: a part that is weak next to the object's peak is the peak of a crop without it.
  The crops' maps are pasted back and fused with the hiding maps by max.

Cost: each hiding pass and each crop is one more multi-scale CAM (``len(scales)`` forward
passes), so an image with K classes takes up to K x ``rounds`` + 4 times the plain CAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igcam_cli.datasets import Sample
from igcam_cli.methods.base import CamMethod
from igcam_cli.methods.multiscale import multiscale_cam
from igcam_cli.models import CamNet
from igcam_cli.options import option
from igcam_cli.transforms import normalise, resize, scaled_size


@dataclass(frozen=True)
class CcamOptions:
    """How far ``ccam`` hides and re-runs, when it stops, and its crops."""

    rounds: int = option(
        5, "Most hide-and-re-run passes per class; each costs one more multi-scale CAM (0: "
           "crops only).", min=0)
    fill_threshold: float = option(
        0.7, "Pixels whose map is above this are filled with the image's mean colour before "
             "the next pass.", above=0, below=1)
    min_gain: float = option(
        0.02, "Stop a class early when a pass adds less than this share of the image to its "
              "found area.", min=0, below=1)
    min_score: float = option(
        0.5, "Stop a class early when the classifier's probability for it on the hidden image "
             "falls below this (nothing of the class is left to reveal).", min=0, below=1)
    crops: bool = option(
        True, "Also fuse the CAMs of four corner crops meeting at the classes' centres of mass "
              "(4 more multi-scale CAMs per image).")
    crop_margin: float = option(
        0.1, "How far each crop reaches past the centres of mass, as a share of the image side "
             "(0..0.5).", min=0, max=0.5)
    crop_size: int | None = option(
        None, "Long side the crops are zoomed to before their CAM. Default: the image's long "
              "side.", min=32)



@torch.inference_mode()
def hide_and_reveal(model: CamNet, image: torch.Tensor, cams: torch.Tensor, classes: list[int],
                    scales: tuple[float, ...], flip: bool, config: CcamOptions) -> torch.Tensor:
    """Grow each class's map (K, H, W) by what re-runs on its progressively hidden image show."""
    fill = image.mean(dim=(1, 2), keepdim=True)
    maps = cams.clone()
    min_pixels = config.min_gain * maps[0].numel()
    for k, c in enumerate(classes):
        for _ in range(config.rounds):
            hidden = maps[k] > config.fill_threshold
            if not hidden.any():  # nothing to hide: a re-run would see the same image
                break
            rerun, probs = multiscale_cam(model, torch.where(hidden, fill, image), scales, flip,
                                          [c])
            if probs[c] < config.min_score:
                break
            revealed = normalise(rerun[0].masked_fill(hidden, 0)[None])[0]
            maps[k] = torch.maximum(maps[k], revealed)
            if (maps[k] > config.fill_threshold).sum() - hidden.sum() < min_pixels:
                break
    return maps


def crop_boxes(cams: torch.Tensor, margin: float) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of four corner crops meeting at the maps' centres of mass.

    Each crop reaches ``margin`` of the side past every class's centre of mass, so each holds a
    share of every object; the split point is kept in the middle half so no crop is a sliver.
    """
    _, height, width = cams.shape
    mass = cams.sum(dim=(1, 2))
    split = []
    for axis, side in ((2, height), (1, width)):  # rows: sum over columns, and vice versa
        coords = torch.arange(side, device=cams.device, dtype=cams.dtype)
        centre = (cams.sum(axis) @ coords / mass.clamp_min(1e-12)).where(mass > 0, side / 2)
        low, high = (centre.clamp(side / 4, 3 * side / 4) + d * margin * side
                     for d in (-1, 1))
        split.append((max(int(low.min().floor()), 0), min(int(high.max().ceil()), side)))
    (top, bottom), (left, right) = split
    return [(0, bottom, 0, right), (0, bottom, left, width),
            (top, height, 0, right), (top, height, left, width)]


@torch.inference_mode()
def crop_cams(model: CamNet, image: torch.Tensor, cams: torch.Tensor, classes: list[int],
              scales: tuple[float, ...], flip: bool, config: CcamOptions) -> torch.Tensor:
    """(K, H, W) max over the four crops of their zoomed, crop-normalised multi-scale CAMs."""
    fused = torch.zeros_like(cams)
    long_side = config.crop_size or max(image.shape[1:])
    for top, bottom, left, right in crop_boxes(cams, config.crop_margin):
        size = (bottom - top, right - left)
        crop = image[None, :, top:bottom, left:right]
        zoomed = resize(crop, scaled_size(*size, long_side / max(size)))[0]
        crop_cam, _ = multiscale_cam(model, zoomed, scales, flip, classes)
        region = fused[:, top:bottom, left:right]
        torch.maximum(region, normalise(resize(crop_cam[None], size)[0]), out=region)
    return fused


@torch.inference_mode()
def class_conditional(model: CamNet, image: torch.Tensor, cams: torch.Tensor, classes: list[int],
                      scales: tuple[float, ...], flip: bool, config: CcamOptions) -> torch.Tensor:
    """The hiding maps of ``cams`` (K, H, W), fused with the crops' maps, max-normalised."""
    if not classes:
        return cams
    maps = hide_and_reveal(model, image, cams, classes, scales, flip, config)
    if config.crops:
        maps = torch.maximum(maps, crop_cams(model, image, cams, classes, scales, flip, config))
    return normalise(maps)


class ClassConditional(CamMethod):
    """Class-conditional inference: hide what was found and re-run, plus crops around the
    objects (up to rounds x classes + 4 more CAMs per image)."""

    name = "ccam"
    Options = CcamOptions

    def __call__(self, sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
        return class_conditional(self.context.model, image, cams, classes, self.context.scales,
                                 self.context.flip, self.options)
