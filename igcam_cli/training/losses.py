"""The training stages' loss terms, each a function of tensors and its own hyperparameters.

Every CAM here comes from :meth:`CamNet.cam` and every map is compared after
:func:`transforms.normalise` (per-map max-normalisation), the form ``igcam cam`` writes: the
terms constrain the maps' shapes, not their scale, which the classification loss sets.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from igcam_cli.models import CamNet
from igcam_cli.transforms import normalise, resize, scaled_size


def pyramid_loss(model: CamNet, batch: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused logits and their loss plus the mean loss of each FPN level's own logits.

    Deep supervision: the fused features alone can lean on one level, but ``igcam cam`` fuses
    the CAMs of every level, so each level must be discriminative by itself with the shared
    classifier. The level terms are averaged, so they weigh as much as the fused one.
    """
    logits, levels = model.pyramid_logits(batch)
    deep = torch.stack([F.multilabel_soft_margin_loss(level, target) for level in levels])
    return logits, F.multilabel_soft_margin_loss(logits, target) + deep.mean()


def consistency_loss(model: CamNet, batch: torch.Tensor, cams: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    """L1 between the normalised CAMs of the batch and of its half-size copy (labelled classes)."""
    half = resize(batch, (batch.shape[-2] // 2, batch.shape[-1] // 2))
    small = F.interpolate(model.cam(model.features(half)), size=cams.shape[-2:], mode="bilinear",
                          align_corners=False)
    diff = (normalise(cams) - normalise(small)).abs().mean(dim=(2, 3))
    return (diff * target).sum() / target.sum().clamp_min(1)


def boundary_loss(batch: torch.Tensor, cams: torch.Tensor, target: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """Edge-aware smoothness: CAM gradients cost where the (downsized) image is flat."""
    image = F.adaptive_avg_pool2d(batch.mean(dim=1, keepdim=True), cams.shape[-2:])
    maps = normalise(cams)
    loss = 0
    for dim in (2, 3):
        grad_map = maps.diff(dim=dim).abs()
        edge = torch.exp(-gamma * image.diff(dim=dim).abs())
        loss = loss + ((grad_map * edge).mean(dim=(2, 3)) * target).sum()
    return loss / target.sum().clamp_min(1)


def frozen_copy(model: CamNet) -> CamNet:
    """The SupportNet: the starting classifier, kept as it is while its copy trains."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def support_cams(support: CamNet, batch: torch.Tensor, scales: tuple[float, ...],
                 size: tuple[int, int]) -> torch.Tensor:
    """The SupportNet's CAMs at each scale, resized to ``size``, summed and max-normalised.

    Small scales see whole objects, large ones their details: the fused map is the more complete
    and better-placed target that MAM and RCM learn from.
    """
    height, width = batch.shape[-2:]
    fused = sum(F.interpolate(support.cam(support.features(
                                  resize(batch, scaled_size(height, width, scale)))),
                              size=size, mode="bilinear", align_corners=False)
                for scale in scales)
    return normalise(fused)


def mam_loss(cams: torch.Tensor, guide: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-scale attentive loss: attention-weighted L1 between the normalised CAMs and ``guide``.

    The attention ``|2 guide - 1|`` trusts the SupportNet where it is sure (clearly object or
    clearly not) and ignores its half-way pixels, where the fused, upsampled maps are blurred.
    L1 rather than MSE: its pull stays the same when the maps are already close (MSE's fades)
    and it is not dominated by the few pixels where the SupportNet is plainly wrong.
    """
    attention = (2 * guide - 1).abs()
    diff = (attention * (normalise(cams) - guide).abs()).sum(dim=(2, 3))
    diff = diff / attention.sum(dim=(2, 3)).clamp_min(1e-5)
    return (diff * target).sum() / target.sum().clamp_min(1)


def rcm_loss(features: torch.Tensor, guide: torch.Tensor, *, threshold: float,
             bg_threshold: float, temperature: float, pixels: int) -> torch.Tensor:
    """Regional contrastive loss (InfoNCE) of the pixel features against the batch's prototypes.

    ``guide`` (B, C, h, w) holds the SupportNet's normalised CAMs, zero for unlabelled classes.
    A pixel whose best class is above ``threshold`` belongs to that class's region, one below
    ``bg_threshold`` to the background; the rest is left out. Each region's prototype is the mean
    of its L2-normalised features over the batch, detached so that it acts as the target the
    region's pixels move to (parameter-free: the checkpoint stays an ordinary classifier). Up
    to ``pixels`` pixels per region are drawn at random as anchors.
    """
    feats = F.normalize(features, dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    score, label = guide.max(dim=1)
    background = guide.shape[1]
    label = torch.where(score < bg_threshold, background, label).flatten()
    keep = ((score < bg_threshold) | (score > threshold)).flatten()
    feats, label = feats[keep], label[keep]
    onehot = F.one_hot(label, background + 1).to(feats.dtype)
    present = onehot.sum(dim=0) > 0
    if present.sum() < 2:  # a single region has nothing to be contrasted with
        return features.sum() * 0
    prototypes = F.normalize((onehot.T @ feats.detach())[present], dim=1)
    # Random keys in [0, 1) added to the labels group the pixels by region in random order;
    # a pixel's rank inside its group decides whether it is sampled.
    order = torch.argsort(label + torch.rand(len(label), device=label.device))
    grouped = label[order]
    rank = torch.arange(len(grouped), device=label.device) - torch.searchsorted(grouped, grouped)
    anchors = order[rank < pixels]
    logits = feats[anchors] @ prototypes.T / temperature
    return F.cross_entropy(logits, (present.cumsum(0) - 1)[label[anchors]])
