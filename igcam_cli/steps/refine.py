"""``igcam refine``: CAM files -> VOC palette pseudo-masks.

Each image's class maps go through the ``--method`` chain of :mod:`igcam_cli.refiners`
(``crf``: DenseCRF; ``rw``: random walk with learned affinities; ``par``: propagation with
colour affinities; ``none``: nothing), and whatever the chain leaves unlabelled is labelled by
the background threshold: a constant background plane at ``threshold`` prepended to the class
maps, argmax. An optional uncertainty band (``bg_threshold`` below ``threshold``) marks pixels
whose best class score lies between the two as 255, the value VOC tools ignore.
``--save-scores`` also keeps the propagated maps as CAM files, so that ``igcam eval --cams``
can sweep their threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from igcam_cli import distributed, options
from igcam_cli.artifacts import DEFAULT_REFINER, RunDir, ensure_dir, read_cam, write_cam
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError
from igcam_cli.images import save_label_map
from igcam_cli.methods import CAM_THRESHOLD, METHODS, cams_threshold
from igcam_cli.options import option
from igcam_cli.refiners import (
    REFINERS,
    Maps,
    RefineChain,
    RefineContext,
    parse_refiners,
    refiner_help,
)
from igcam_cli.runner import ImageStep, ImageWork, resolve_device

THRESHOLDS = ", ".join([f"cam {CAM_THRESHOLD}"] + [f"{name} {method.threshold}"
                                                   for name, method in METHODS.items()
                                                   if method.threshold is not None])


@dataclass
class RefineConfig:
    run: Path = options.run_dir()
    cams: Path | None = option(None, "CAM folder (default RUN/cam).")
    out: Path | None = options.out("RUN/refine, or RUN/refine-METHOD for another --method")
    method: str = option(
        DEFAULT_REFINER, f"Refiner: {', '.join(['none', *REFINERS])}, or a chain joined by "
        "'+' (e.g. rw+crf). none: the background threshold alone. " + refiner_help() +
        " Join them with '+' to chain them (e.g. rw+crf); a stage that decides the labels "
        "(crf) comes last.")
    threshold: float | None = option(
        None, "Background threshold: pixels whose best class score (after the method's "
              "propagation) is at most this are background. Default: the one measured best on "
              f"voc-real for the CAM method named in the CAM folder's manifest ({THRESHOLDS}), "
              f"{CAM_THRESHOLD} for maps of unknown origin.")
    bg_threshold: float | None = option(
        None, "Optional lower threshold: scores between it and --threshold become 255 "
              "(uncertain).")
    max_side: int = option(
        2000, "Images are refined shrunk to this longer side and their labels enlarged back, "
              "which bounds the memory of DenseCRF and the walks (0: every image at full "
              "size).", min=0)
    save_scores: bool = option(
        False, "Also write the refined score maps as CAM files into OUT/scores, for "
               "`igcam eval --cams` to sweep their threshold.")
    device: str = options.device()
    workers: int = options.workers()
    io_workers: int = options.io_workers()
    overwrite: bool = options.overwrite()
    shard: str | None = options.shard()
    strict: bool = options.strict()
    wait: bool = options.wait()
    # Options of the refiners, by name; a refiner missing here runs with its defaults.
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _RefineImage:
    """One image's work (read the CAM file, refine, write the mask), picklable so that
    ``--workers`` processes can run it; the chain sets itself up in the process that runs it."""

    chain: RefineChain
    bg_threshold: float | None
    out: Path
    scores: Path | None

    def load(self, sample: Sample) -> tuple[Maps, np.ndarray]:
        """The CAM file's maps and its class probabilities (kept for --save-scores)."""
        data = read_cam(sample.image)
        return Maps(data["cams"].astype(np.float32), data["classes"].astype(np.int64),
                    Path(str(data["image"]))), data["scores"]

    def compute(self, sample: Sample, loaded: tuple[Maps, np.ndarray]
                ) -> tuple[Maps, np.ndarray]:
        maps, scores = loaded
        return self.chain(maps, self.bg_threshold), scores

    def write(self, sample: Sample, result: tuple[Maps, np.ndarray]) -> None:
        maps, scores = result
        if self.scores is not None:
            write_cam(RunDir.image_maps(self.scores, sample.id), maps.classes,
                      maps.cams.astype(np.float16), scores, maps.image)
        save_label_map(RunDir.image_mask(self.out, sample.id), maps.labels)


def refine(config: RefineConfig) -> Path:
    """Write one palette PNG per CAM file."""
    options.check(config)
    run = RunDir(config.run)
    cams = config.cams or run.cam()
    if not RunDir.image_files(cams):
        raise run.no_cams(cams)
    chosen = ""
    if config.threshold is None:
        # Resolved before the manifest is written, so the recipe records the number used.
        threshold, why = cams_threshold(cams)
        chosen = f" (background threshold {threshold}: {why})"
        config = replace(config, threshold=threshold)
    if config.bg_threshold is not None and config.bg_threshold >= config.threshold:
        raise IgcamError("--bg-threshold must be below --threshold")
    shard = distributed.shard(config.shard)
    names = parse_refiners(config.method)
    context = RefineContext(run, resolve_device(config.device), config.threshold,
                            config.max_side)
    chain = RefineChain(names, context, config.method_options)
    chain.check()
    workers = 1 if chain.in_process else config.workers
    if workers == 1:  # refined here: set up before the first image, so that what fails stops
        chain.setup()  # the step before any
    used = {stage.name: stage.options for stage in chain.stages}
    step = ImageStep("refine", config.out or run.refine(config.method),
                     replace(config, method_options=used), shard, config.wait)
    # Each CAM file stands in for its image: the sample's path is the .npz itself.
    samples = step.select([Sample(p.stem, p) for p in RunDir.image_files(cams)])
    step.record.inputs = {"cams": str(cams), "num_cams": len(samples)}
    scores = ensure_dir(RunDir.refined_scores(step.out)) if config.save_scores else None
    one = _RefineImage(chain, config.bg_threshold, step.out, scores)
    step.run(samples, ImageWork(one.load, one.compute, one.write),
             lambda s: RunDir.image_mask(step.out, s.id), overwrite=config.overwrite,
             strict=config.strict, workers=workers,
             io_workers=config.io_workers)
    return step.finish("masks written", chosen)
