"""One module per CLI step; each exposes a config dataclass and a plain function over it.

:data:`STEPS` lists them in pipeline order without importing them (a step's module imports
torch, which takes seconds): the command line makes one subcommand of each entry, and
``igcam run`` finds in it the steps a refiner ``needs`` first. Adding a step is its module and
one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The registries whose parts' options a step also takes, as "module:attribute".
METHODS = "igcam_cli.methods:METHODS"
REFINERS = "igcam_cli.refiners:REFINERS"
STAGES = "igcam_cli.training:STAGES"


@dataclass(frozen=True)
class Step:
    """One step: where its config class and function live, its help, and which registries'
    part options fill which field of its config."""

    target: str  # "module:Config:function"
    help: str
    parts: tuple[tuple[str, str], ...] = ()  # (registry, config field): {part name: options}

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        """The step's config class and function (importing its module)."""
        module, config, function = self.target.split(":")
        imported = importlib.import_module(module)
        return getattr(imported, config), getattr(imported, function)


STEPS: dict[str, Step] = {
    "train-cls": Step(
        "igcam_cli.steps.train_cls:TrainConfig:train_cls",
        "Train the multi-label classifier that CAMs are read from.",
        ((STAGES, "stage_options"),)),
    "propose": Step(
        "igcam_cli.steps.propose:ProposeConfig:propose",
        "Object proposals per image by Selective Search: .npz boxes in original pixels."),
    "influence": Step(
        "igcam_cli.steps.influence:InfluenceConfig:influence",
        "Influence of every training image on a held-out loss, and spatial influence maps."),
    "cam": Step(
        "igcam_cli.steps.cam:CamConfig:cam",
        "Multi-scale CAMs per image, saved as compressed .npz (class ids + float16 maps). "
        "Options named --METHOD-... belong to that --method.",
        ((METHODS, "method_options"),)),
    "train-aff": Step(
        "igcam_cli.steps.train_aff:AffinityConfig:train_aff",
        "Learn inter-pixel affinities (a class-boundary map) from the CAMs, for "
        "`refine --method rw`."),
    "refine": Step(
        "igcam_cli.steps.refine:RefineConfig:refine",
        "CAMs -> VOC palette PNG pseudo-masks (0 background, 1..C classes, 255 uncertain). "
        "Options named --METHOD-... belong to that --method.",
        ((REFINERS, "method_options"),)),
    "train-seg": Step(
        "igcam_cli.steps.train_seg:SegConfig:train_seg",
        "Train a semantic segmentation network (torchvision head on an igcam backbone) on the "
        "pseudo-masks, with epoch checkpoints and --resume as train-cls."),
    "predict": Step(
        "igcam_cli.steps.predict:PredictConfig:predict",
        "Label maps of any photos from the train-seg network: VOC palette PNGs as refine "
        "writes, classes not in an image's labels suppressed. Options named --REFINER-... "
        "belong to that --refine refiner.",
        ((REFINERS, "refiner_options"),)),
    "eval": Step(
        "igcam_cli.steps.eval:EvalConfig:evaluate",
        "mIoU, per-class IoU, precision and recall over background + C classes (GT 255 "
        "ignored)."),
    "report": Step(
        "igcam_cli.steps.report:ReportConfig:report",
        "One HTML page about a run: settings, training curve, steps, every method's scores, "
        "charts and pictures (opens from disk)."),
    "export": Step(
        "igcam_cli.steps.export:ExportConfig:export",
        "Masks in the formats other tools read: COCO JSON (per class, or instances from "
        "connected components, RLE) or grayscale PNGs of the class ids."),
    "status": Step(
        "igcam_cli.steps.status:StatusConfig:status",
        "Where a run got to: every step folder done, running, stopped or in shards, with its "
        "files, counts, time and warnings (--json for scripts)."),
    "merge-shards": Step(
        "igcam_cli.steps.merge_shards:MergeConfig:merge_shards",
        "One manifest.json for a folder (or every folder of a run) that --shard I/N processes "
        "or torchrun filled; names missing shards."),
    # run's --method is the CAM method, its --refine the refiner chain: it takes both's options.
    "run": Step(
        "igcam_cli.steps.run:RunConfig:run",
        "Every step in order in one run directory, skipping what is already done. Options "
        "named --METHOD-... belong to that CAM --method or --refine refiner.",
        ((METHODS, "method_options"), (REFINERS, "refiner_options"))),
    "demo": Step(
        "igcam_cli.steps.demo:DemoConfig:demo",
        "Generate a small shapes dataset and run the whole pipeline on it (a few CPU minutes)."),
}
