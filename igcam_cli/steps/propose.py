"""``igcam propose``: object proposals for every image by Selective Search (OpenCV ximgproc).

The search runs on a copy of the image shrunk to a long side of at most ``size``: its graph
segmentation measures region sizes in pixels, so a fixed working size gives the same
granularity on every dataset and bounds the time per image. Its boxes are mapped back to the
original pixels, boxes that are too thin or too small are dropped, then non-maximum
suppression and the ``top`` best are kept.

Selective search sorts its boxes by a random number times the region's level in the merge
hierarchy, lowest first, so small early segments lead (the reverse of the paper's order, as
OpenCV's source notes). The step reverses it, so merged, object-sized regions come first: box i
of n scores (n - i) / n and suppression keeps the better-ranked of two overlapping boxes. On
coco128 the top 300 boxes find 94% of the objects at IoU 0.5 this way, 78% in OpenCV's order.
The random numbers come from the C library's ``rand()``, which ``cv2.setRNGSeed`` does not
reach, so it is seeded before every search: the same image always gives the same boxes,
whatever the worker, order or shard.

Saved as ``<id>.npz`` with ``boxes`` (int32, N x 4: x1, y1, x2, y2 in original pixels, x2 and
y2 exclusive), ``scores`` (float32, best first), ``image`` (the source path) and ``size``
(int32 [H, W]).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torchvision.ops import nms

from igcam_cli import distributed, options
from igcam_cli.artifacts import (
    RunDir,
    fingerprint,
    read_proposals,
    write_proposals,
)
from igcam_cli.datasets import Sample, load_dataset
from igcam_cli.errors import IgcamError
from igcam_cli.options import MAX_SIDE, option
from igcam_cli.runner import DataStepConfig, ImageStep, ImageWork, read_sample

# --mode -> the SelectiveSearchSegmentation method that sets up its strategies.
MODES = {"fast": "switchToSelectiveSearchFast", "quality": "switchToSelectiveSearchQuality",
         "single": "switchToSingleStrategy"}
RANK_SEED = 0  # seed of the C rand() behind selective search's ranking
# One image's proposals before they are written: boxes, scores, the image's (H, W).
Proposals = tuple[np.ndarray, np.ndarray, tuple[int, int]]
NEEDS_CONTRIB = ("propose needs opencv-contrib-python-headless (cv2.ximgproc); plain "
                 "opencv-python hides it: pip uninstall opencv-python opencv-python-headless "
                 "&& pip install opencv-contrib-python-headless")


@dataclass
class ProposeConfig(DataStepConfig):
    out: Path | None = options.out("RUN/propose")
    mode: str = option(
        "fast", "Selective search strategy: fast (2 colour spaces x 3 segmentation scales), "
                "quality (5 x 5, more similarity measures: slowest, most boxes) or single "
                "(1 x 1: fastest, fewest boxes).", choices=tuple(MODES))
    size: int = option(
        500, "Long side in pixels of the copy the search runs on; larger images are shrunk to "
             "it and the boxes mapped back to the original pixels.", min=32,
        max=MAX_SIDE)
    min_size: float = option(
        0.02, "Drop boxes with a side shorter than this fraction of the image's shorter side.",
        min=0, below=1)
    max_aspect: float = option(
        4.0, "Drop boxes whose long side is more than this many times their short side.", min=1)
    nms_iou: float = option(
        0.7, "Non-maximum suppression: drop a box that overlaps a better-ranked one with more "
             "than this IoU (1 keeps all).", above=0, max=1)
    top: int = option(300, "Boxes kept per image, best-ranked first.", min=1)
    workers: int = options.workers()
    io_workers: int = options.io_workers()
    overwrite: bool = options.overwrite()
    shard: str | None = options.shard()
    strict: bool = options.strict()
    wait: bool = options.wait()


def _import_cv2() -> ModuleType:
    """cv2 with the contrib modules: plain opencv-python imports fine but lacks ximgproc."""
    try:
        import cv2
    except ImportError:
        raise IgcamError(NEEDS_CONTRIB) from None
    if not hasattr(cv2, "ximgproc"):
        raise IgcamError(NEEDS_CONTRIB)
    return cv2


def selective_search(bgr: np.ndarray, mode: str) -> np.ndarray:
    """Boxes (n, 4) as x, y, width, height in ``bgr``'s pixels, in the search's rank order."""
    cv2 = _import_cv2()
    cv2.setNumThreads(1)  # --workers processes share the cores instead of each taking them all
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    getattr(search, MODES[mode])()
    ctypes.CDLL(None).srand(RANK_SEED)  # the rand() that ranks the regions (POSIX libc)
    return np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)


def proposals(image: np.ndarray, config: ProposeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) int32 x1, y1, x2, y2 in ``image``'s pixels and their scores, best first."""
    cv2 = _import_cv2()
    height, width = image.shape[:2]
    scale = min(1.0, config.size / max(height, width))
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if scale < 1:
        bgr = cv2.resize(bgr, (small_w, small_h), interpolation=cv2.INTER_AREA)
    xywh = selective_search(bgr, config.mode)[::-1]  # coarse merged regions first
    n = len(xywh)
    scores = (n - np.arange(n)) / n
    corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    to_original = np.tile([width / small_w, height / small_h], 2)
    boxes = np.clip(np.rint(corners * to_original), 0, [width, height, width, height])
    sides = boxes[:, 2:] - boxes[:, :2]
    short, long = sides.min(axis=1), sides.max(axis=1)
    keep = short >= max(1.0, config.min_size * min(height, width))
    keep &= long <= config.max_aspect * short
    boxes, scores = boxes[keep], scores[keep]
    kept = nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(),
               config.nms_iou)[: config.top].numpy()
    return boxes[kept].astype(np.int32), scores[kept].astype(np.float32)


def propose_image(sample: Sample, image: np.ndarray, config: ProposeConfig) -> Proposals:
    """One image's proposals and its (H, W) (module level so worker processes can run it)."""
    boxes, scores = proposals(image, config)
    return boxes, scores, image.shape[:2]


def write_image_proposals(sample: Sample, result: Proposals, out: Path) -> None:
    boxes, scores, size = result
    write_proposals(RunDir.image_maps(out, sample.id), boxes, scores, sample.image, size)


def propose(config: ProposeConfig) -> Path:
    """Write one proposal file per image; finished images are skipped unless ``overwrite``."""
    options.check(config)
    _import_cv2()
    shard = distributed.shard(config.shard)
    step = ImageStep("propose", config.out or RunDir(config.run).step("propose"), config,
                     shard, config.wait)
    dataset = load_dataset(config.dataset, strict=config.strict)
    step.problems(dataset.problems)
    samples = step.select(dataset.samples)
    step.record.inputs = {"dataset": config.dataset.describe(),
                          "images_fingerprint": fingerprint(s.id for s in samples)}
    out = step.out
    work = ImageWork(read_sample, functools.partial(propose_image, config=config),
                     functools.partial(write_image_proposals, out=out))
    step.run(samples, work, lambda s: RunDir.image_maps(out, s.id), overwrite=config.overwrite,
             strict=config.strict, workers=config.workers, io_workers=config.io_workers)
    done = [p for s in samples if (p := RunDir.image_maps(out, s.id)).is_file()]
    mean_boxes = float(np.mean([len(read_proposals(p)["boxes"]) for p in done])) if done else 0.0
    step.record.extra["boxes_per_image"] = round(mean_boxes, 1)
    return step.finish(extra=f", {mean_boxes:.1f} boxes per image")
