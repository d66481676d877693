"""``igcam refine``: CAM files -> VOC palette pseudo-masks.

Seeds: a constant background plane at ``threshold`` prepended to the class maps, argmax. An
optional uncertainty band (``bg_threshold`` below ``threshold``) marks pixels whose best class
score lies between the two as 255, the value VOC tools ignore. With ``crf`` a DenseCRF on the
image sharpens the seeds along colour edges, either from the seed labels (IRN's settings) or
from the normalised scores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from igcam_cli import options
from igcam_cli.artifacts import (
    RunDir,
    Shard,
    read_cam,
)
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import IGNORE, image_size, read_image, save_label_map
from igcam_cli.masks import seed_labels
from igcam_cli.options import option
from igcam_cli.runner import ImageStep
from igcam_cli.transforms import resize

CRF_MODES = ("labels", "scores")
DEFAULT_THRESHOLD = 0.15  # IRN's background threshold for CAM seeds


@dataclass
class RefineConfig:
    run: Path = options.run_dir()
    cams: Path | None = option(None, "CAM folder (default RUN/cam).")
    out: Path | None = options.out("RUN/refine")
    threshold: float = option(
        DEFAULT_THRESHOLD, "Background threshold: pixels whose best class score is at most "
                           "this are background.")
    bg_threshold: float | None = option(
        None, "Optional lower threshold: scores between it and --threshold become 255 "
              "(uncertain).")
    crf: bool = option(True, "Refine with DenseCRF (needs pydensecrf2).")
    crf_mode: str = option(
        "labels", "labels: unaries from the seed labels (IRN); scores: from normalised CAMs.",
        choices=CRF_MODES)
    crf_iters: int = option(10, "CRF mean-field iterations.", min=1)
    max_side: int = option(
        2000, "DenseCRF runs on images shrunk to this longer side and its labels are enlarged "
              "back, which bounds its memory (0: every image at full size).", min=0)
    gt_prob: float = option(0.7, "Seed confidence in labels mode.")
    workers: int = options.workers()
    overwrite: bool = options.overwrite()
    shard: str | None = options.shard()
    strict: bool = options.strict()


def _import_crf():  # noqa: ANN202 - the module has no type stubs
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf import utils
    except ImportError:
        raise IgcamError("--crf needs pydensecrf: pip install pydensecrf2 "
                         "(or run refine with --no-crf)") from None
    return dcrf, utils


def dense_crf(image: np.ndarray, cams: np.ndarray, classes: np.ndarray,
              config: RefineConfig) -> np.ndarray:
    """DenseCRF over background + the image's classes; returns a label map like seed_labels."""
    dcrf, utils = _import_crf()
    height, width = cams.shape[1:]
    n_labels = len(classes) + 1
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    rgb = np.ascontiguousarray(image)
    if config.crf_mode == "labels":
        # IRN: unaries from the seed labels with confidence gt_prob.
        seeds = seed_labels(cams, np.arange(len(classes)), config.threshold)
        crf.setUnaryEnergy(utils.unary_from_labels(seeds, n_labels, gt_prob=config.gt_prob,
                                                   zero_unsure=False))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=rgb, compat=10)
    else:
        # Scores normalised so that their argmax is the seed; CLIP-ES pairwise settings.
        scores = np.concatenate([np.full((1, height, width), config.threshold), cams])
        probs = np.clip(scores, 1e-5, None)
        probs /= probs.sum(axis=0, keepdims=True)
        crf.setUnaryEnergy(utils.unary_from_softmax(probs.astype(np.float32)))
        crf.addPairwiseGaussian(sxy=1, compat=3)
        crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=rgb, compat=4)
    q = np.array(crf.inference(config.crf_iters)).reshape(n_labels, height, width)
    lookup = np.concatenate([[0], classes + 1]).astype(np.uint8)
    return lookup[q.argmax(axis=0)]


def _crf_within(image: np.ndarray, cams: np.ndarray, classes: np.ndarray,
                config: RefineConfig) -> np.ndarray:
    """DenseCRF labels at the CAMs' size; on the shrunk ``image`` when it was read shrunk
    (``--max-side``), the labels then enlarged back by nearest neighbour."""
    small = image.shape[:2]
    if small == cams.shape[1:]:
        return dense_crf(image, cams, classes, config)
    shrunk = resize(torch.from_numpy(cams)[None], small)[0].numpy()
    labels = dense_crf(image, shrunk, classes, config)
    height, width = cams.shape[1:]
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))


def refine_one(path: Path, config: RefineConfig, out: Path) -> None:
    """Refine one CAM file (module level so worker processes can run it)."""
    data = read_cam(path)
    cams, classes = data["cams"].astype(np.float32), data["classes"].astype(np.int64)
    if config.crf and len(classes):
        source = Path(str(data["image"]))
        width, height = image_size(source)
        if (height, width) != cams.shape[1:]:
            raise ImageProblem(f"{path}: CAM size {cams.shape[1:]} differs from its image "
                               f"{(height, width)}")
        image = read_image(source, config.max_side or None)
        labels = _crf_within(image, cams, classes, config)
        if config.bg_threshold is not None:
            band = seed_labels(cams, classes, config.threshold, config.bg_threshold) == IGNORE
            labels[band] = IGNORE
    else:
        labels = seed_labels(cams, classes, config.threshold, config.bg_threshold)
    save_label_map(out / f"{path.stem}.png", labels)


def _refine_sample(sample: Sample, config: RefineConfig, out: Path) -> None:
    refine_one(sample.image, config, out)


def refine(config: RefineConfig) -> Path:
    """Write one palette PNG per CAM file."""
    options.check(config)
    if config.bg_threshold is not None and config.bg_threshold >= config.threshold:
        raise IgcamError("--bg-threshold must be below --threshold")
    if config.crf:
        _import_crf()
    shard = Shard.parse(config.shard)
    run = RunDir(config.run)
    cams = config.cams or run.step("cam")
    if not cams.is_dir() or not any(cams.glob("*.npz")):
        raise IgcamError(f"no CAM files in {cams} (run `igcam cam` first)")
    step = ImageStep("refine", config.out or run.step("refine"), config, shard)
    # Each CAM file stands in for its image: the sample's path is the .npz itself.
    samples = step.select([Sample(p.stem, p) for p in sorted(cams.glob("*.npz"))])
    step.record.inputs = {"cams": str(cams), "num_cams": len(samples)}
    out = step.out
    step.run(samples, functools.partial(_refine_sample, config=config, out=out),
             lambda s: out / f"{s.id}.png", overwrite=config.overwrite, strict=config.strict,
             workers=config.workers)
    return step.finish("masks written")
