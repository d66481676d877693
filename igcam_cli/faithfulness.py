"""Faithfulness of CAMs to the classifier, scored without ground truth.

A map is faithful when the pixels it ranks highest are the ones the classifier's score of the
class depends on. Three perturbation scores, each from batched forward passes of the same
classifier over a bounded number of perturbed copies of the image (the class probability is
the sigmoid of its logit, the classifier being multi-label):

- **deletion** (Petsiuk et al., RISE, 2018): the most relevant pixels first are replaced by
  the backbone's mean colour, in ``steps`` equal steps from none to all; the area under the
  probability curve. *Lower is better* (the score falls fast when the right pixels go).
- **insertion** (RISE): from a heavily blurred copy, the most relevant pixels first are put
  back; the area under the curve. *Higher is better*.
- **ROAD** (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", 2022): remove a fraction of the pixels, most relevant first (MoRF) or least
  relevant first (LeRF), and fill them by noisy linear imputation, so that the holes' shape
  does not leak the map to the classifier; the change in the class probability, averaged over
  ``percentiles``. MoRF: *lower is better*; LeRF: *higher is better*; ``road`` = (LeRF -
  MoRF) / 2, the combined score of pytorch-grad-cam's ``ROADCombined``: *higher is better*.

The imputation fills each removed pixel with the weighted mean of its eight neighbours (1/6
direct, 1/12 diagonal, ROAD's weights) - the harmonic fill of the holes - solved here by
coarse-to-fine Jacobi sweeps rather than by a sparse solver, then adds
Gaussian noise of ``noise`` (in [0, 1] pixel units) to the filled pixels, drawn from a fixed
seed so that every method sees the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from igcam_cli.models import CamNet
from igcam_cli.options import option

SCORES = ("deletion", "insertion", "road_morf", "road_lerf", "road")
# Which way is better for each score: +1 higher, -1 lower (shown in tables and the report).
BETTER = {"deletion": -1, "insertion": 1, "road_morf": -1, "road_lerf": 1, "road": 1}


@dataclass(frozen=True)
class FaithfulnessOptions:
    steps: int = option(
        10, "Deletion / insertion steps from none to all pixels: forward passes per class "
            "and curve (the area is a trapezoid sum over them).", min=2, max=100)
    percentiles: str = option(
        "0.2,0.4,0.6,0.8", "Fractions of the pixels ROAD removes (pytorch-grad-cam's "
                           "ROADCombined default).")
    max_side: int = option(
        448, "Score each image shrunk to at most this many pixels on its longer side (the "
             "classifier's training crop): the passes cost grows with the pixels.", min=32)
    noise: float = option(
        0.01, "Standard deviation of the noise ROAD adds to imputed pixels (RGB in [0, 1]).",
        min=0, max=1)
    batch: int = option(16, "Perturbed images per forward pass.", min=1)

    def fractions(self) -> list[float]:
        """``percentiles`` parsed: fractions strictly between 0 and 1."""
        try:
            values = [float(v) for v in self.percentiles.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or not all(0 < v < 1 for v in values):
            raise ValueError(f"--faith-percentiles must be fractions between 0 and 1, e.g. "
                             f"0.2,0.4,0.6,0.8, got {self.percentiles!r}")
        return values


def relevance_ranks(cam: torch.Tensor) -> torch.Tensor:
    """Each pixel's place (0 = most relevant) in the map's descending order, as (H, W); ties in
    pixel order, so that the ranking is the same on every run."""
    flat = cam.flatten()
    order = torch.sort(-flat, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=order.device)
    return ranks.view(cam.shape)


def impute(images: torch.Tensor, removed: torch.Tensor, noise: float, generator: torch.Generator
           ) -> torch.Tensor:
    """ROAD's noisy linear imputation of the ``removed`` (B, 1, H, W) pixels of ``images``
    (B, 3, H, W): the harmonic fill of each hole from its border, plus noise.

    Solved coarse to fine: Jacobi sweeps on each grid from 1/16 of the size up to the full one
    (many on the small grids, where they are cheap, few on the large), each grid starting
    from the coarser one's solution, so that a wide hole is filled from far away without the
    thousands of sweeps one full-size grid would need."""
    known = (~removed).to(images.dtype)
    size = images.shape[-2:]
    current = None
    for factor, sweeps in ((16, 200), (8, 50), (4, 20), (2, 10), (1, 8)):
        grid = (max(1, size[0] // factor), max(1, size[1] // factor))
        weight = F.adaptive_avg_pool2d(known, grid) if factor > 1 else known
        values = (F.adaptive_avg_pool2d(images * known, grid) / weight.clamp_min(1e-6)
                  if factor > 1 else images)
        fixed = (weight > 0).to(images.dtype) if factor > 1 else known
        start = (values * fixed).sum((2, 3), keepdim=True) / fixed.sum((2, 3), keepdim=True
                                                                       ).clamp_min(1)
        current = (start.expand_as(values) if current is None else
                   F.interpolate(current, size=grid, mode="bilinear", align_corners=False))
        current = values * fixed + current * (1 - fixed)
        for _ in range(sweeps):
            current = values * fixed + _neighbour_mean(current) * (1 - fixed)
    jitter = torch.randn(current.shape, generator=generator, device="cpu").to(current)
    return (current + noise * jitter * (1 - known)).clamp(0, 1)


def _neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """The weighted mean of each pixel's eight neighbours (ROAD's weights, borders repeated),
    as shifted sums: on a CPU several times faster than a grouped convolution."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    direct = p[..., :h, 1:w + 1] + p[..., 2:, 1:w + 1] + p[..., 1:h + 1, :w] + p[..., 1:h + 1, 2:]
    diagonal = p[..., :h, :w] + p[..., :h, 2:] + p[..., 2:, :w] + p[..., 2:, 2:]
    return direct / 6 + diagonal / 12


class Perturber:
    """The faithfulness scores of one classifier; :meth:`scores` takes one image at a time."""

    def __init__(self, model: CamNet, options: FaithfulnessOptions) -> None:
        self.model = model
        self.options = options
        self.fractions = options.fractions()

    @torch.no_grad()
    def _probabilities(self, images: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """(N, len(classes)) class probabilities of a stack of images, in batches."""
        out = []
        for start in range(0, len(images), self.options.batch):
            logits = self.model(images[start:start + self.options.batch])
            out.append(torch.sigmoid(logits.float())[:, classes])
        return torch.cat(out)

    def scores(self, image: torch.Tensor, cams: torch.Tensor, classes: list[int],
               seed: int = 0) -> list[dict[str, float]]:
        """One dict of :data:`SCORES` per class of ``cams`` (K, h, w), for ``image`` (3, H, W)
        in [0, 1] on the model's device (maps of another size are resized to it)."""
        if not classes:
            return []
        size = image.shape[-2:]
        if cams.shape[-2:] != size:
            cams = F.interpolate(cams[None].float(), size=size, mode="bilinear",
                                 align_corners=False)[0]
        pixels = size[0] * size[1]
        mean = self.model.mean.view(3, 1, 1).to(image)
        sigma = max(size) / 10  # heavy: the blurred copy keeps colours, not shapes
        blurred = gaussian_blur(image[None], [2 * int(2 * sigma) + 1] * 2, [sigma, sigma])[0]
        # The curves' ends are the same for every class: the image, all grey, all blurred.
        ends = self._probabilities(torch.stack([image, mean.expand_as(image), blurred]), classes)
        steps = self.options.steps
        inner = [j / steps for j in range(1, steps)]
        generator = torch.Generator().manual_seed(seed)
        results = []
        for k, cls in enumerate(classes):
            ranks = relevance_ranks(cams[k])
            def top(fraction: float, ranks: torch.Tensor = ranks) -> torch.Tensor:
                return (ranks < round(fraction * pixels))[None]
            deleted = torch.stack([torch.where(top(f), mean, image) for f in inner])
            inserted = torch.stack([torch.where(top(f), image, blurred) for f in inner])
            most = torch.stack([top(p) for p in self.fractions])
            least = torch.stack([~top(1 - p) for p in self.fractions])
            road = impute(image.expand(2 * len(self.fractions), -1, -1, -1),
                          torch.cat([most, least]), self.options.noise, generator)
            probs = self._probabilities(torch.cat([deleted, inserted, road]), [cls])[:, 0]
            original, grey, blur = (float(v) for v in ends[:, k])
            n = len(inner)
            deletion = [original, *probs[:n].tolist(), grey]
            insertion = [blur, *probs[n:2 * n].tolist(), original]
            morf = float((probs[2 * n:2 * n + len(self.fractions)] - original).mean())
            lerf = float((probs[2 * n + len(self.fractions):] - original).mean())
            results.append({"deletion": _area(deletion), "insertion": _area(insertion),
                            "road_morf": morf, "road_lerf": lerf, "road": (lerf - morf) / 2})
        return results


def _area(curve: list[float]) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoids)."""
    values = np.asarray(curve, dtype=np.float64)
    return float((values[1:] + values[:-1]).sum() / (2 * (len(values) - 1)))
