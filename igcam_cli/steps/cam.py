"""``igcam cam``: class activation maps for every image of a dataset or a bare folder.

Per image: the CAM at each scale and its horizontal flip (one batch of two), resized to the
image, summed, restricted to the image's labelled classes (or, for unlabelled images, the
classes the classifier predicts), each divided by its maximum. Saved as ``<id>.npz`` with
``classes`` (0-based class ids), ``cams`` (float16, K x H x W), ``scores`` (sigmoid of all
classes) and ``image`` (the source path, so later steps need no dataset options).

``--method NAME`` passes these maps through a method of :mod:`igcam_cli.methods` (one class
each, with its own ``--NAME-*`` options; ``a+b`` chains them), e.g. ``igcam`` fuses them with
the class evidence of the image's object proposals. Methods other than ``cam`` write to
``RUN/cam-<method>`` so that one run directory holds every method side by side.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from igcam_cli import distributed, options
from igcam_cli.artifacts import RunDir, fingerprint, sha256_file, write_cam
from igcam_cli.datasets import Sample, load_dataset
from igcam_cli.errors import IgcamError, print_warning
from igcam_cli.images import image_size, read_image
from igcam_cli.methods import METHODS, Chain, MethodContext, method_help, parse_methods
from igcam_cli.methods.multiscale import LevelFusionOptions, base_cams
from igcam_cli.models import check_classes, load_classifier
from igcam_cli.options import option
from igcam_cli.runner import ClassifierStepConfig, ImageStep, ImageWork, resolve_device
from igcam_cli.transforms import normalise, resize, resize_keeping_peaks, to_tensor

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# One image's CAM file before it is written: classes, float16 maps, class probabilities, and
# the image's (H, W) when the maps are kept at a stride.
CamResult = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int] | None]


@dataclass
class CamConfig(ClassifierStepConfig):
    out: Path | None = options.out("RUN/cam, or RUN/cam-METHOD for --method METHOD")
    scales: tuple[float, ...] = options.scales(DEFAULT_SCALES)
    flip: bool = option(True, "Add each scale's horizontal flip.")
    use_labels: bool = option(
        True, "Use the image-level labels when known (else the predicted classes).")
    score_threshold: float = option(
        0.5, "Class probability above which an unlabelled image gets a CAM for a class.",
        min=0, max=1)
    method: str = option(
        "cam", f"CAM method: {', '.join(['cam', *METHODS])}, or several joined by '+'. "
               "cam: multi-scale CAM. " + method_help() + " With a classifier trained with "
               "--fpn, every method starts from the fused CAMs of its pyramid levels "
               "(--fpn-levels). Join methods with '+' to chain them, each taking the previous "
               "maps as its base.")
    max_side: int = option(
        2000, "Images whose longer side exceeds this many pixels are processed shrunk to it, "
              "their maps written at the original size: memory stays bounded whatever the "
              "input (0: every image at full size).", min=0)
    influence: Path | None = option(
        None, "An influence folder (e.g. RUN/influence) whose spatial maps igcam uses to weight "
              "the boxes and --fpn-attention influence to weight the levels. Default: not "
              "used.")
    fpn: LevelFusionOptions = options.nested(LevelFusionOptions, prefix="fpn-")
    device: str = options.device()
    batch_images: int = option(
        1, "Images of one size (after --max-side) that share each scale's forward pass, at "
           "most this many: on a GPU a batch fills the device better than one image's few "
           "views. Images are taken in size order to make the batches; the maps are those of "
           "one image at a time up to float rounding (images of other sizes are never padded "
           "into a batch, since padding changes the features).", min=1, panel=options.MACHINE)
    store_stride: int = option(
        4, "Keep the maps at 1/N of the image's size in the CAM files (antialiased bilinear); "
           "every later step reads them enlarged back to the image. Measured on voc-real "
           "(bench/RESULTS.md): 4 makes the files 12.9x smaller than 1 (full size) and moves "
           "seed and DenseCRF mIoU by at most 0.01; 8, 43x and 0.03. Each file says its own "
           "size, so a folder may mix strides (one made before this option is full size).",
        min=1)
    precision: str = option(
        "fp32", "fp32, or bf16 / fp16: the network under torch.autocast in that type (faster "
                "on GPUs with tensor cores; the maps change slightly, see bench/RESULTS.md). "
                "Maps are summed and resized in fp32 either way.", choices=tuple(PRECISIONS),
        panel=options.MACHINE)
    io_workers: int = options.io_workers()
    overwrite: bool = options.overwrite()
    shard: str | None = options.shard()
    strict: bool = options.strict()
    wait: bool = options.wait()
    # Options of the methods, by method name; a method missing here runs with its defaults.
    method_options: dict[str, Any] = field(default_factory=dict)


def cam(config: CamConfig) -> Path:
    """Write one CAM file per image; finished images are skipped unless ``overwrite``."""
    options.check(config)
    if not config.scales or any(s <= 0 for s in config.scales):
        raise IgcamError("--scales must be positive numbers, e.g. 1.0,0.5,1.5,2.0")
    shard = distributed.shard(config.shard)
    names = parse_methods(config.method)
    run = RunDir(config.run)
    checkpoint = config.classifier()
    device = resolve_device(config.device)
    model, payload = load_classifier(checkpoint, device)
    model = model.to(memory_format=torch.channels_last)
    dataset = load_dataset(config.dataset, strict=config.strict)
    check_classes(payload, dataset.class_names, checkpoint)
    compute = base_cams(model, config.scales, config.flip, config.fpn, config.influence)
    chain = Chain(names, MethodContext(model, device, config.scales, config.flip, dataset, run,
                                       checkpoint, config.influence, config.strict),
                  config.method_options)
    chain.setup()  # here, so that a method that cannot work stops the step before any image
    # The manifest records the options of the methods that ran, not of every one registered.
    used = {stage.name: stage.options for stage in chain.stages}
    step = ImageStep("cam", config.out or run.cam(config.method),
                     replace(config, method_options=used), shard, config.wait)
    step.problems(dataset.problems)
    samples = step.select(dataset.samples)
    step.record.inputs = {"dataset": config.dataset.describe(), "checkpoint": str(checkpoint),
                          "checkpoint_sha256": sha256_file(checkpoint),
                          "images_fingerprint": fingerprint(s.id for s in samples),
                          "class_names": list(dataset.class_names)}  # what eval checks

    def load(sample: Sample) -> tuple[torch.Tensor, tuple[int, int]]:
        image = to_tensor(read_image(sample.image, config.max_side or None))
        width, height = image_size(sample.image)
        return image, (height, width)

    def autocast() -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[config.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    unclassed: list[float] = []  # best score of each predicted image left without a class

    def keep(sample: Sample, probs: torch.Tensor) -> list[int]:
        """The classes an image gets maps for: its labels, else the confident predictions."""
        if config.use_labels and sample.labels is not None:
            return list(sample.labels)
        return torch.nonzero(probs >= config.score_threshold).flatten().tolist()

    def maps_of_batch(batch: list[Sample], loaded: list[tuple[torch.Tensor, tuple[int, int]]]
                      ) -> list[CamResult]:
        images = torch.stack([image for image, _ in loaded]).to(device)
        with autocast():
            return [finished(sample, image, size, classes, cams, probs)
                    for sample, image, (_, size), (classes, cams, probs) in zip(
                        batch, images, loaded, compute(batch, images, keep), strict=True)]

    def finished(sample: Sample, image: torch.Tensor, size: tuple[int, int], classes: list[int],
                 cams: torch.Tensor, probs: torch.Tensor) -> CamResult:
        """The methods' maps of one image from its base CAMs, at the image's size."""
        if image.shape[1:] != size:
            step.record.count("downscaled")
        if not classes and not (config.use_labels and sample.labels is not None):
            unclassed.append(float(probs.max()) if len(probs) else 0.0)
        maps = chain(sample, image, normalise(cams), classes)
        if maps.shape[1:] != size:  # processed shrunk: maps at the image's size
            maps = (resize(maps[None].float(), size)[0] if len(maps)
                    else maps.new_zeros((0, *size)))
        stored = stored_size(size, config.store_stride)
        if stored != size:  # kept at a stride, each map's peak kept as read_cam will
            maps = resize_keeping_peaks(maps, stored)
        # float16 on the device: half the bytes to copy, and the same rounding as numpy's.
        return (np.array(classes), maps.to(torch.float16).cpu().numpy(),
                probs.float().cpu().numpy(), None if stored == size else size)

    def save(sample: Sample, result: CamResult) -> None:
        classes, maps, probs, size = result
        write_cam(RunDir.image_maps(step.out, sample.id), classes, maps, probs, sample.image, size)

    if config.batch_images > 1:  # neighbours of one size make the batches
        samples = sorted(samples, key=size_order)
    work = ImageWork(load, lambda sample, loaded: maps_of_batch([sample], [loaded])[0], save,
                     compute_batch=maps_of_batch, group=lambda loaded: loaded[0].shape,
                     batch=config.batch_images)
    step.run(samples, work, lambda s: RunDir.image_maps(step.out, s.id),
             overwrite=config.overwrite, strict=config.strict, io_workers=config.io_workers)
    if unclassed:  # an empty CAM file is a valid output, but rarely the one wanted
        step.record.count("no_class", len(unclassed))
        message = (f"{len(unclassed)} of {step.record.counts.get('processed', 0)} images: no "
                   f"class scored --score-threshold {config.score_threshold} or more (best "
                   f"{max(unclassed):.2f}); their maps are empty and their masks will be all "
                   "background")
        step.record.warn(message)
        print_warning(message)
    return step.finish()



def size_order(sample: Sample) -> tuple[int, int]:
    """An image's (width, height) from its header; an unreadable one sorts first, to fail as
    it would have in dataset order."""
    try:
        return image_size(sample.image)
    except IgcamError:
        return (0, 0)


def stored_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The (h, w) maps of an image of ``size`` are kept at with ``--store-stride``."""
    return (-(-size[0] // stride), -(-size[1] // stride))
