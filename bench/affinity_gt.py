"""How well the learned affinities and the train-aff targets agree with the ground truth.

    python bench/affinity_gt.py RUN GT_DIR [--images N]

For each image: the ground-truth mask reduced to the stride-4 grid (nearest), its pairs within
radius 5 labelled as train-aff labels its targets (255 ignored), and the share of background,
foreground and negative pairs that the boundary network gets right (affinity above or below
0.5). Also the precision of the train-aff targets: the share of confident cells whose label is
the ground truth's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from igcam_cli.affinity import PathAffinity, affinity_labels, grid_size, load_boundary_net
from igcam_cli.artifacts import read_cam
from igcam_cli.images import IGNORE, read_image, read_label_map
from igcam_cli.transforms import to_tensor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("gt", type=Path)
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    net, _ = load_boundary_net(args.run / "train-aff" / "affinity.pt", torch.device("cpu"))
    paths = PathAffinity(5, half=True)
    right, total = np.zeros(3), np.zeros(3)
    target_right = target_total = 0
    for path in sorted((args.run / "cam").glob("*.npz"))[: args.images]:
        image = to_tensor(read_image(Path(str(read_cam(path)["image"]))))
        size = grid_size(image.shape[-2:])
        gt = Image.fromarray(read_label_map(args.gt / f"{path.stem}.png"))
        gt = torch.from_numpy(np.asarray(gt.resize(size[::-1], Image.Resampling.NEAREST))
                              .astype(np.int64))
        with torch.no_grad():
            affinity = paths(net(image[None]))[0]
        for k, (mask, want) in enumerate(zip(affinity_labels(gt, paths.offsets),
                                             (True, True, False), strict=True)):
            right[k] += ((affinity > 0.5) == want)[mask].sum().item()
            total[k] += mask.sum().item()
        target = read_label_map(args.run / "train-aff" / "labels" / f"{path.stem}.png")
        confident = (target != IGNORE) & (gt.numpy() != IGNORE)
        target_right += int((target[confident] == gt.numpy()[confident]).sum())
        target_total += int(confident.sum())
    share = right / np.maximum(total, 1)
    print(f"ground-truth pairs right: background {100 * share[0]:.1f} %, foreground "
          f"{100 * share[1]:.1f} %, negative {100 * share[2]:.1f} % "
          f"({int(total.sum())} pairs, {args.images} images)")
    print(f"train-aff targets: {100 * target_right / max(target_total, 1):.1f} % of confident "
          "cells carry the ground truth's label")


if __name__ == "__main__":
    main()
