"""Propagation refiners: each image's CAMs spread over their objects by a random walk.

``rw`` takes its affinities from the boundary network ``igcam train-aff`` learned (IRN);
``par`` needs no training and takes them from the image's colours (in the spirit of PAR,
pixel-adaptive refinement). Both walk on the stride-4 grid with a sparse transition
(:mod:`igcam_cli.affinity`), then threshold the propagated maps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from igcam_cli.affinity import PathAffinity, disk_offsets, grid_size, load_boundary_net, propagate
from igcam_cli.images import read_image
from igcam_cli.options import option
from igcam_cli.refiners.base import Maps, Refiner
from igcam_cli.transforms import to_tensor

# Pairs per grid cell grow with the radius squared (about 1,600 at 32 against IRN's 40 at 5):
# beyond this a walk's pair list would not fit in memory for a photo of ordinary size.
MAX_RADIUS = 32

@dataclass(frozen=True)
class WalkOptions:
    checkpoint: Path | None = option(
        None, "Affinity checkpoint (default RUN/train-aff/affinity.pt).")
    beta: float = option(10.0, "Sharpness: affinities are raised to this power (IRN: 10).",
                         above=0)
    steps: int = option(256, "Random-walk steps (IRN: 256).", min=1)
    radius: int = option(5, "Pairs within this many grid cells (stride 4) are linked (IRN: 5).",
                         min=2, max=MAX_RADIUS)


class RandomWalk(Refiner):
    """Random walk of the CAMs with the affinities of the boundary network that `igcam
    train-aff` learned (IRN)."""

    name = "rw"
    Options = WalkOptions
    in_process = True
    needs = ("train-aff",)

    def setup(self) -> None:
        path = self.options.checkpoint or self.context.run.affinity()
        self.net, _ = load_boundary_net(path, self.context.device)
        self.paths = PathAffinity(self.options.radius, half=False)

    @torch.no_grad()
    def __call__(self, maps: Maps) -> Maps:
        if not len(maps.classes):
            return maps
        device = self.context.device
        image = to_tensor(read_image(maps.image, self.context.max_side or None)).to(device)
        boundary = self.net(image[None])
        affinity = self.paths(boundary)[0]
        cams = torch.from_numpy(maps.cams).to(device)
        walked = propagate(cams, affinity, self.paths.offsets, self.options.beta,
                           self.options.steps)
        return replace(maps, cams=walked.cpu().numpy())


@dataclass(frozen=True)
class ParOptions:
    sigma: float = option(
        0.5, "Colour scale: neighbours whose colour differs by this many of the image's "
             "colour standard deviations get affinity exp(-1/2).", above=0)
    steps: int = option(64, "Propagation steps.", min=1)
    radius: int = option(5, "Pairs within this many grid cells (stride 4) are linked.", min=2,
                         max=MAX_RADIUS)


class ColourWalk(Refiner):
    """Training-free propagation of the CAMs with affinities from the image's colours."""

    name = "par"
    Options = ParOptions

    def __call__(self, maps: Maps) -> Maps:
        if not len(maps.classes):
            return maps
        image = to_tensor(read_image(maps.image, self.context.max_side or None))
        size = grid_size(maps.cams.shape[1:])
        colours = F.adaptive_avg_pool2d(image[None], size)[0]  # (3, h, w)
        colours = colours / colours.flatten(1).std(dim=1).clamp(min=1e-3)[:, None, None]
        offsets = disk_offsets(self.options.radius, half=False)
        affinity = colour_affinity(colours, offsets, self.options.sigma)
        walked = propagate(torch.from_numpy(maps.cams), affinity, offsets, 1.0,
                           self.options.steps)
        return replace(maps, cams=walked.numpy())


def colour_affinity(colours: torch.Tensor, offsets: list[tuple[int, int]], sigma: float
                    ) -> torch.Tensor:
    """(n_offsets, h, w) Gaussian affinities of each position's colour to its partners'."""
    _, h, w = colours.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(colours[None], (pad,) * 4, mode="replicate")[0]
    found = []
    for dy, dx in offsets:
        other = padded[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w]
        found.append(torch.exp(-((colours - other) ** 2).sum(0) / (2 * sigma * sigma)))
    return torch.stack(found)
