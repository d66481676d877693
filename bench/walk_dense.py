"""Sparse random walk against IRN's dense form, on the same images of a run.

    python bench/walk_dense.py RUN --mode compare --images 3   # time both, compare the maps
    /usr/bin/time -f %M python bench/walk_dense.py RUN --mode sparse --images 3  # peak RSS
    /usr/bin/time -f %M python bench/walk_dense.py RUN --mode dense --images 3
    python bench/walk_dense.py RUN --mode compare --images 5 --max-side 250  # smaller grids

The same affinities (RUN/train-aff/affinity.pt, radius 5, beta 10) and 256 steps: ``steps``
sparse products with the radius-limited transition, or the dense N x N matrix squared 8 times
(IRN) and applied once. Prints seconds per image and the largest difference of the walked
maps (each max-normalised) and the share of pixels whose mask label differs at t = 0.3.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from igcam_cli.affinity import (
    PathAffinity,
    dense_random_walk,
    load_boundary_net,
    random_walk,
    transition,
)
from igcam_cli.artifacts import read_cam
from igcam_cli.images import read_image
from igcam_cli.masks import seed_labels
from igcam_cli.transforms import to_tensor

STEPS, BETA, RADIUS, THRESHOLD = 256, 10.0, 5, 0.3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--mode", choices=("compare", "sparse", "dense"), default="compare")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--max-side", type=int, default=0,
                        help="shrink each image (and its CAMs) to this longer side first")
    args = parser.parse_args()
    net, _ = load_boundary_net(args.run / "train-aff" / "affinity.pt", torch.device("cpu"))
    paths = PathAffinity(RADIUS, half=False)
    files = sorted((args.run / "cam").glob("*.npz"))[: args.images]
    seconds = {"sparse": [], "dense": []}
    for path in files:
        data = read_cam(path)
        image = to_tensor(read_image(Path(str(data["image"])), args.max_side or None))
        with torch.no_grad():
            affinity = paths(net(image[None]))[0]
        cams = torch.from_numpy(data["cams"].astype(np.float32))
        if cams.shape[-2:] != image.shape[-2:]:
            cams = torch.nn.functional.interpolate(cams[None], size=image.shape[-2:],
                                                   mode="bilinear", align_corners=False)[0]
        grid = torch.nn.functional.adaptive_avg_pool2d(cams[None], affinity.shape[-2:])[0]
        matrix = transition(affinity, paths.offsets, BETA)
        walked = {}
        for mode, walk in (("sparse", random_walk), ("dense", dense_random_walk)):
            if args.mode not in ("compare", mode):
                continue
            started = time.perf_counter()
            out = walk(grid, matrix, STEPS)
            seconds[mode].append(time.perf_counter() - started)
            walked[mode] = (out / out.amax(dim=(1, 2), keepdim=True).clamp(min=1e-5)).numpy()
        if args.mode == "compare":
            classes = data["classes"].astype(np.int64)
            labels = [seed_labels(walked[m], classes, THRESHOLD) for m in ("sparse", "dense")]
            print(f"{path.stem}: grid {tuple(grid.shape[1:])} ({grid[0].numel()} nodes), "
                  f"max |sparse - dense| {np.abs(walked['sparse'] - walked['dense']).max():.2e},"
                  f" labels differ at {100 * (labels[0] != labels[1]).mean():.4f} % of cells")
    for mode, values in seconds.items():
        if values:
            print(f"{mode}: {np.mean(values):.2f} s per image (walk only, {len(values)} images)")


if __name__ == "__main__":
    main()
