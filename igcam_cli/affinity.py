"""Inter-pixel affinity on a stride-4 grid: the boundary network, its targets, the random walk.

IRN (Ahn et al., CVPR 2019) learns a class-boundary map B from the CAMs alone: the affinity of
two grid positions within a radius is ``1 - max B`` along the straight line between them, and
a random walk with those affinities spreads each CAM over its object up to the boundaries.

- :func:`disk_offsets` and :class:`PathAffinity` compute every pair's affinity from B with one
  ``unfold`` (no per-pair Python), for training (radius 10, half disk) and for the walk.
- :func:`affinity_labels` turns a label map of confident foreground classes, confident
  background (0) and ignored (255) into the pair labels the balanced loss needs.
- :class:`BoundaryNet` is a light head over a frozen backbone's stages.
- :func:`transition` and :func:`random_walk` run the walk with a sparse, radius-limited
  transition matrix: ``steps`` sparse products instead of IRN's dense matrix squarings, whose
  N x N matrix needs 0.5 GB per VOC image at stride 4.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from igcam_cli.artifacts import read_checkpoint
from igcam_cli.backbones import Backbone, build_backbone
from igcam_cli.errors import IgcamError
from igcam_cli.images import IGNORE

STRIDE = 4  # the grid of the boundary map and of the walk, in image pixels


def disk_offsets(radius: int, half: bool) -> list[tuple[int, int]]:
    """(dy, dx) offsets with 0 < |offset| < radius; ``half`` keeps one of each +- pair."""
    found = []
    for dy in range(-radius + 1, radius):
        for dx in range(-radius + 1, radius):
            if (dy, dx) == (0, 0) or dy * dy + dx * dx >= radius * radius:
                continue
            if half and (dy < 0 or (dy == 0 and dx < 0)):
                continue
            found.append((dy, dx))
    return found


def _line(dy: int, dx: int) -> list[tuple[int, int]]:
    """The grid points on the segment from (0, 0) to (dy, dx), both ends included."""
    n = max(abs(dy), abs(dx))
    return sorted({(round(t * dy / n), round(t * dx / n)) for t in range(n + 1)})


class PathAffinity:
    """Affinities ``1 - max B`` along each offset's line, for every grid position at once.

    ``unfold`` gathers the (2r+1)^2 window around each position; each offset reads the window
    cells on its line (padded with the centre, which every line holds) and takes their max.
    Positions whose partner lies outside the map get affinity 0.
    """

    def __init__(self, radius: int, half: bool) -> None:
        self.radius = radius
        self.offsets = disk_offsets(radius, half)
        side = 2 * radius - 1
        centre = (radius - 1) * side + (radius - 1)
        lines = [[(y + radius - 1) * side + (x + radius - 1) for y, x in _line(dy, dx)]
                 for dy, dx in self.offsets]
        longest = max(map(len, lines))
        self.index = torch.tensor([line + [centre] * (longest - len(line)) for line in lines])

    def __call__(self, boundary: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) boundary probabilities -> (B, n_offsets, h, w) affinities in [0, 1]."""
        b, _, h, w = boundary.shape
        pad = self.radius - 1
        side = 2 * pad + 1
        # Outside the map counts as a boundary (1), so pairs leaving the image get affinity 0.
        window = F.unfold(F.pad(boundary, (pad,) * 4, value=1.0), side)  # (B, side^2, h*w)
        index = self.index.to(boundary.device)
        along = window[:, index.flatten()].view(b, *index.shape, h * w)
        return (1 - along.amax(dim=2)).view(b, len(self.offsets), h, w)


def affinity_labels(labels: torch.Tensor, offsets: list[tuple[int, int]]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks (n_offsets, h, w) of background pairs, foreground pairs and negative pairs.

    ``labels`` (h, w) holds 0 (confident background), 1..C (confident class) and 255
    (ignored). A pair is positive when both ends carry the same label (background or a class),
    negative when they carry different ones, ignored when either end is 255 or off the map.
    """
    h, w = labels.shape
    radius = max(max(abs(dy), abs(dx)) for dy, dx in offsets) + 1
    padded = F.pad(labels[None, None].float(), (radius,) * 4, value=IGNORE)[0, 0].long()
    bg, fg, neg = [], [], []
    for dy, dx in offsets:
        other = padded[radius + dy: radius + dy + h, radius + dx: radius + dx + w]
        known = (labels != IGNORE) & (other != IGNORE)
        same = known & (labels == other)
        bg.append(same & (labels == 0))
        fg.append(same & (labels != 0))
        neg.append(known & (labels != other))
    return torch.stack(bg), torch.stack(fg), torch.stack(neg)


def affinity_loss(affinity: torch.Tensor, bg: torch.Tensor, fg: torch.Tensor,
                  neg: torch.Tensor) -> torch.Tensor:
    """IRN's balanced loss: background, foreground and negative pairs weigh equally whatever
    their counts (background pairs outnumber the others many times over)."""
    eps = 1e-5

    def mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (values * mask).sum() / mask.sum().clamp(min=1)

    positive = -torch.log(affinity + eps)
    negative = -torch.log(1 + eps - affinity)
    return (mean(positive, bg) / 2 + mean(positive, fg) / 2 + mean(negative, neg)) / 2


class BoundaryNet(nn.Module):
    """IRN's edge branch on a frozen backbone: each stage to 32 channels, upsampled to stride
    4, concatenated, and a 1x1 convolution to one boundary logit per grid position."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 32, 1, bias=False), nn.GroupNorm(4, 32), nn.ReLU())
            for c in backbone.stage_channels)
        self.head = nn.Conv2d(32 * len(backbone.stage_channels), 1, 1)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> BoundaryNet:
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm and stochastic depth stay in eval mode
        return self

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's stage maps of (B, 3, H, W) images in [0, 1]."""
        with torch.no_grad():
            return self.backbone.stages((images - self.mean) / self.std)

    def head_logits(self, stages: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Boundary logits (B, 1, *size) from the stage maps."""
        maps = [F.interpolate(branch(s), size=size, mode="bilinear", align_corners=False)
                for branch, s in zip(self.branches, stages, strict=True)]
        return self.head(torch.cat(maps, dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Boundary probabilities (B, 1, ceil(H/4), ceil(W/4))."""
        size = grid_size(images.shape[-2:])
        return torch.sigmoid(self.head_logits(self.stages(images), size))


def grid_size(size: tuple[int, int] | torch.Size) -> tuple[int, int]:
    """The stride-4 grid of an image of ``size`` (height, width)."""
    return math.ceil(size[0] / STRIDE), math.ceil(size[1] / STRIDE)


def transition(affinity: torch.Tensor, offsets: list[tuple[int, int]], beta: float
               ) -> torch.Tensor:
    """The walk's sparse (N x N, COO) transition over an (n_offsets, h, w) affinity map.

    Row p holds ``a^beta`` for every partner of p within the radius and 1 for p itself, divided
    by their sum: one product with it replaces each position's scores by a weighted mean of
    its neighbours', the weights vanishing across a boundary. Off-map partners (affinity 0)
    are left out.
    """
    n_off, h, w = affinity.shape
    weights = affinity.clamp(0, 1) ** beta
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols, values = [torch.arange(h * w)], [torch.arange(h * w)], [torch.ones(h * w)]
    for k, (dy, dx) in enumerate(offsets):
        y, x = ys + dy, xs + dx
        inside = ((y >= 0) & (y < h) & (x >= 0) & (x < w)).flatten()
        rows.append(torch.arange(h * w)[inside])
        cols.append((y * w + x).flatten()[inside])
        values.append(weights[k].flatten()[inside].cpu())
    row, col, value = torch.cat(rows), torch.cat(cols), torch.cat(values)
    value = value / torch.zeros(h * w).index_add_(0, row, value)[row]
    matrix = torch.sparse_coo_tensor(torch.stack([row, col]), value, (h * w, h * w),
                                     check_invariants=False)
    return matrix.coalesce().to(affinity.device)


def random_walk(scores: torch.Tensor, matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` products of (K, h, w) score maps with the transition matrix."""
    k, h, w = scores.shape
    x = scores.reshape(k, h * w).T.contiguous()
    for _ in range(steps):
        x = matrix @ x
    return x.T.reshape(k, h, w)


def dense_random_walk(scores: torch.Tensor, matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The same walk with IRN's dense form: the matrix squared log2(steps) times, then applied
    once (``steps`` a power of two). For benchmarks: N x N floats per image."""
    dense = matrix.to_dense()
    for _ in range(int(math.log2(steps))):
        dense = dense @ dense
    k, h, w = scores.shape
    return (dense @ scores.reshape(k, h * w).T).T.reshape(k, h, w)


def propagate(cams: torch.Tensor, affinity: torch.Tensor, offsets: list[tuple[int, int]],
              beta: float, steps: int) -> torch.Tensor:
    """Full-resolution (K, H, W) maps walked over an (n_offsets, h, w) stride-4 affinity map:
    averaged onto the grid, walked, enlarged back and each divided by its maximum."""
    height, width = cams.shape[-2:]
    if not len(cams):
        return cams
    grid = F.adaptive_avg_pool2d(cams[None].float(), affinity.shape[-2:])[0]
    walked = random_walk(grid, transition(affinity, offsets, beta), steps)
    full = F.interpolate(walked[None], size=(height, width), mode="bilinear",
                         align_corners=False)[0].clamp(min=0)
    return full / full.amax(dim=(1, 2), keepdim=True).clamp(min=1e-5)


AFFINITY_FORMAT = "igcam-affinity/1"


def affinity_payload(net: BoundaryNet, backbone: str, classifier_sha256: str,
                     **extra: object) -> dict:
    """What an affinity checkpoint holds: only tensors and plain types (weights_only-safe)."""
    return {"format": AFFINITY_FORMAT, "backbone": backbone,
            "classifier_sha256": classifier_sha256, "model": net.state_dict(), **extra}


def load_boundary_net(path: Path, device: torch.device) -> tuple[BoundaryNet, dict]:
    """Rebuild a trained boundary network from an igcam affinity checkpoint."""
    payload = read_checkpoint(path, AFFINITY_FORMAT, "affinity checkpoint", "train-aff")
    try:
        net = BoundaryNet(build_backbone(payload["backbone"], pretrained=False))
        net.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise IgcamError(f"affinity checkpoint {path} does not fit its backbone "
                         f"{payload.get('backbone')!r}: {type(exc).__name__}") from None
    return net.to(device).eval(), payload
