"""Would one padded batch of all CAM scales change the features? Measured, not assumed.

GPU CAM code often stacks the scales of an image into one batch by padding each view to the
largest. A CNN's features near padding are not those of the view alone, and with a large
receptive field "near" is the whole map. This compares, for the first images of a dataset, the
stride-16 features of each scale computed alone with the same view padded (bottom and right,
mean colour) to the largest scale and cropped back. Run by hand from the repository root:

    python bench/scale_padding.py CHECKPOINT IMAGE_DIR [--images-count 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from igcam_cli.images import list_images, read_image
from igcam_cli.methods.multiscale import views
from igcam_cli.models import load_classifier
from igcam_cli.transforms import to_tensor

SCALES = (1.0, 0.5, 1.5, 2.0)


def padded_features(model: torch.nn.Module, view: torch.Tensor, height: int, width: int,
                    grid: tuple[int, int]) -> torch.Tensor:
    """Features of ``view`` padded to (height, width) with the mean colour, cut to ``grid``."""
    canvas = model.mean.expand(len(view), 3, height, width).clone()
    canvas[..., :view.shape[-2], :view.shape[-1]] = view
    return model.features(canvas)[..., :grid[0], :grid[1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--images-count", type=int, default=5)
    args = parser.parse_args()
    model, _ = load_classifier(args.checkpoint, torch.device("cpu"))
    print("image, scale: relative L2 change of the features, first row / whole map / last row")
    with torch.inference_mode():
        for path in list_images(args.images)[:args.images_count]:
            image = to_tensor(read_image(path))
            batch = [views(image[None], scale, False) for scale in SCALES]
            height, width = (max(v.shape[i] for v in batch) for i in (-2, -1))
            for scale, view in zip(SCALES, batch, strict=True):
                alone = model.features(view)[0]
                padded = padded_features(model, view, height, width, alone.shape[-2:])[0]
                change = (padded - alone).norm(dim=0) / alone.norm(dim=0)
                whole = ((padded - alone).norm() / alone.norm()).item()
                print(f"{path.name} {scale}: {change[0].mean():.3f} / {whole:.3f} / "
                      f"{change[-1].mean():.3f}")


if __name__ == "__main__":
    main()
