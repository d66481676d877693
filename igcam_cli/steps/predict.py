"""``igcam predict``: label maps of any photos from the network ``train-seg`` trained.

Per image: the network's class probabilities (background + C), averaged over ``--scales``
and, with ``--flip``, their mirror images; where the image's labels are known (and
``--use-labels``), every class it is not labelled with is suppressed (its logits -inf), so
the map holds only background and those classes; without labels the network decides. The
argmax is the label map, written as ``refine`` writes masks: one VOC palette PNG per image,
``<image id>.png``, 0 background, 1..C classes.

``--refine`` passes the probabilities through the refiners of ``igcam refine`` (``crf``:
DenseCRF on the image's colours). They read class maps against a background threshold, so
each class's map is its probability against background's, ``p_c / (p_c + p_bg)``, with the
threshold 0.5: a class wins a pixel exactly where the network's argmax gives it, and a
refiner sees how sure the network was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from igcam_cli import distributed, options
from igcam_cli.artifacts import RunDir, fingerprint, sha256_file
from igcam_cli.datasets import Sample, load_dataset
from igcam_cli.images import image_size, read_image, save_label_map
from igcam_cli.models import check_classes
from igcam_cli.options import option
from igcam_cli.refiners import (
    REFINERS,
    Maps,
    RefineChain,
    RefineContext,
    parse_refiners,
    refiner_help,
)
from igcam_cli.runner import DataStepConfig, ImageStep, ImageWork, resolve_device
from igcam_cli.segmentation import SegNet, label_probabilities, load_segmenter
from igcam_cli.transforms import resize, to_tensor

# A class's map against background, p_c / (p_c + p_bg), is above this where it beats
# background: the refiners' background threshold that keeps the network's argmax.
EVEN = 0.5


@dataclass
class PredictConfig(DataStepConfig):
    checkpoint: Path | None = option(
        None, "Segmenter checkpoint (default RUN/train-seg/segmenter.pt).")
    out: Path | None = options.out("RUN/predict")
    # Photos without labels (--images DIR alone) need no --classes: the checkpoint's are used.
    use_labels: bool = option(
        True, "Where an image's labels are known, suppress every class it is not labelled "
              "with (only background and its classes can win a pixel); without labels, or "
              "with --no-use-labels, the network decides alone.")
    scales: tuple[float, ...] = option(
        (1.0,), "Comma-separated scales whose probabilities are averaged (e.g. 0.75,1.0,1.25: "
                "slower, usually a little better).", above=0, max=options.MAX_SCALE)
    flip: bool = option(False, "Also average each scale's horizontal mirror image.")
    refine: str = option(
        "none", f"Refiners of the probabilities: none, {', '.join(REFINERS)}, or a chain joined "
                "by '+' (see `igcam refine --method`), with their options as refine takes them "
                "(--REFINER-...). " + refiner_help())
    max_side: int = option(
        2000, "Images whose longer side exceeds this are segmented shrunk to it and their "
              "labels enlarged back (0: every image at full size).", min=0)
    device: str = options.device()
    io_workers: int = options.io_workers()
    overwrite: bool = options.overwrite()
    shard: str | None = options.shard()
    strict: bool = options.strict()
    wait: bool = options.wait()
    # Options of the refiners, by name; a refiner missing here runs with its defaults.
    refiner_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _PredictImage:
    """One image's work: decode, segment (and refine), write the palette PNG."""

    model: SegNet
    device: torch.device
    config: PredictConfig
    chain: RefineChain
    out: Path

    def load(self, sample: Sample) -> tuple[torch.Tensor, tuple[int, int]]:
        image = to_tensor(read_image(sample.image, self.config.max_side or None))
        width, height = image_size(sample.image)
        return image, (height, width)

    def compute(self, sample: Sample, loaded: tuple[torch.Tensor, tuple[int, int]]
                ) -> np.ndarray:
        image, size = loaded
        allowed = None
        if self.config.use_labels and sample.labels is not None:
            allowed = [0, *(c + 1 for c in sample.labels)]
        probs = label_probabilities(self.model, image.to(self.device), self.config.scales,
                                    self.config.flip, allowed)
        classes = (np.array(sorted(allowed[1:]), dtype=np.int64) - 1 if allowed is not None
                   else np.arange(self.model.num_classes, dtype=np.int64))
        # Background and the classes kept, before enlarging: suppressed ones are zero anyway.
        probs = probs[torch.from_numpy(np.concatenate([[0], classes + 1])).to(probs.device)]
        if probs.shape[1:] != size:  # segmented shrunk: probabilities at the image's size
            probs = resize(probs[None], size)[0]
        against = probs[1:] / (probs[1:] + probs[0]).clamp_min(1e-12)
        maps = Maps(against.float().cpu().numpy(), classes, sample.image)
        return self.chain(maps).labels

    def write(self, sample: Sample, labels: np.ndarray) -> None:
        save_label_map(RunDir.image_mask(self.out, sample.id), labels)


def predict(config: PredictConfig) -> Path:
    """Write one palette PNG per image; finished images are skipped unless ``overwrite``."""
    options.check(config)
    shard = distributed.shard(config.shard)
    names = parse_refiners(config.refine)
    run = RunDir(config.run)
    checkpoint = config.checkpoint or run.segmenter()
    device = resolve_device(config.device)
    model, payload = load_segmenter(checkpoint, device)
    dataset = load_dataset(config.dataset, strict=config.strict)
    if any(s.labels is not None for s in dataset.samples):  # label ids must mean its classes
        check_classes(payload, dataset.class_names, checkpoint)
    chain = RefineChain(names, RefineContext(run, device, EVEN, config.max_side),
                        config.refiner_options)
    chain.check()
    chain.setup()  # here, so that a refiner that cannot work stops the step before any image
    used = {stage.name: stage.options for stage in chain.stages}
    step = ImageStep("predict", config.out or run.predict(),
                     replace(config, refiner_options=used), shard, config.wait)
    step.problems(dataset.problems)
    samples = step.select(dataset.samples)
    step.record.inputs = {"dataset": config.dataset.describe(), "checkpoint": str(checkpoint),
                          "checkpoint_sha256": sha256_file(checkpoint),
                          "images_fingerprint": fingerprint(s.id for s in samples),
                          "class_names": list(dataset.class_names)}
    one = _PredictImage(model, device, config, chain, step.out)
    step.run(samples, ImageWork(one.load, one.compute, one.write),
             lambda s: RunDir.image_mask(step.out, s.id), overwrite=config.overwrite,
             strict=config.strict, io_workers=config.io_workers)
    return step.finish("label maps written")
