"""DenseCRF on the image's colours: seeds from the background threshold, sharpened at edges."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import image_size, read_image
from igcam_cli.masks import seed_labels
from igcam_cli.options import option
from igcam_cli.refiners.base import Maps, Refiner
from igcam_cli.transforms import resize

CRF_MODES = ("labels", "scores")


def import_crf():  # noqa: ANN201 - the module has no type stubs
    """pydensecrf, imported when a step needs it (GPU servers often lack it)."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf import utils
    except ImportError:
        raise IgcamError("DenseCRF needs pydensecrf: pip install pydensecrf2 (or choose "
                         "another refine --method)") from None
    return dcrf, utils


@dataclass(frozen=True)
class CrfOptions:
    mode: str = option(
        "labels", "labels: unaries from the seed labels (IRN); scores: from normalised CAMs.",
        choices=CRF_MODES)
    iters: int = option(10, "Mean-field iterations.", min=1)
    gt_prob: float = option(0.7, "Seed confidence in labels mode.", above=0, below=1)


def dense_crf(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, threshold: float,
              options: CrfOptions) -> np.ndarray:
    """DenseCRF over background + the image's classes; returns a label map like seed_labels."""
    dcrf, utils = import_crf()
    height, width = cams.shape[1:]
    n_labels = len(classes) + 1
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    rgb = np.ascontiguousarray(image)
    if options.mode == "labels":
        # IRN: unaries from the seed labels with confidence gt_prob.
        seeds = seed_labels(cams, np.arange(len(classes)), threshold)
        crf.setUnaryEnergy(utils.unary_from_labels(seeds, n_labels, gt_prob=options.gt_prob,
                                                   zero_unsure=False))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=rgb, compat=10)
    else:
        # Scores normalised so that their argmax is the seed; CLIP-ES pairwise settings.
        scores = np.concatenate([np.full((1, height, width), threshold), cams])
        probs = np.clip(scores, 1e-5, None)
        probs /= probs.sum(axis=0, keepdims=True)
        crf.setUnaryEnergy(utils.unary_from_softmax(probs.astype(np.float32)))
        crf.addPairwiseGaussian(sxy=1, compat=3)
        crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=rgb, compat=4)
    q = np.array(crf.inference(options.iters)).reshape(n_labels, height, width)
    lookup = np.concatenate([[0], classes + 1]).astype(np.uint8)
    return lookup[q.argmax(axis=0)]


def crf_labels(maps: Maps, threshold: float, options: CrfOptions, max_side: int) -> np.ndarray:
    """DenseCRF labels at the maps' size. Images longer than ``max_side`` are refined shrunk
    (the CRF's memory grows with the pixels) and the labels enlarged back."""
    width, height = image_size(maps.image)
    if (height, width) != maps.cams.shape[1:]:
        raise ImageProblem(f"{maps.image}: CAM size {maps.cams.shape[1:]} differs from its "
                           f"image {(height, width)}")
    image = read_image(maps.image, max_side or None)
    small = image.shape[:2]
    if small == (height, width):
        return dense_crf(image, maps.cams, maps.classes, threshold, options)
    shrunk = resize(torch.from_numpy(maps.cams)[None], small)[0].numpy()
    labels = dense_crf(image, shrunk, maps.classes, threshold, options)
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))


class DenseCrf(Refiner):
    """DenseCRF on the image's colours (IRN's settings), seeded at the background threshold."""

    name = "crf"
    Options = CrfOptions
    sets_labels = True

    def check(self) -> None:
        import_crf()

    def __call__(self, maps: Maps) -> Maps:
        if not len(maps.classes):
            return maps
        labels = crf_labels(maps, self.context.threshold, self.options,
                            self.context.max_side)
        return replace(maps, labels=labels)
