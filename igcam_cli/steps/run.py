"""``igcam run``: every step in order into one run directory, skipping finished work.

train-cls -> cam -> [eval of the CAMs] -> [the steps the refiners need, e.g. train-aff for rw]
-> refine -> [eval of the masks] -> overlay pictures, the evals when the dataset has ground
truth. Every option of the CAM methods and refiners (``--lpcam-k``, ``--crf-iters``) is passed
to ``cam`` and ``refine`` as they would take it. The default CAM method
is ``lpcam`` and the default refiner ``crf``: the best measured on real photos with the default
classifier (bench/RESULTS.md). ``--refine rw+crf`` adds the random walk, which spreads the CAMs
over their objects before DenseCRF snaps the result to the image's edges.

Without ``threshold`` the background threshold comes from a sweep when there is ground truth
(how WSSS papers report seeds), else it is the one measured best for the CAM method (what
``refine`` picks by itself). A walk changes how high the
maps stand (its best threshold lies above the seeds'), so a chain that starts with walks is run
in two passes: the walks alone, keeping their maps, whose sweep gives the threshold for the
labelling stage (crf) over those maps. Each step keeps its own resumability, so a rerun continues
where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igcam_cli import options
from igcam_cli.artifacts import DEFAULT_REFINER, PLAIN_CAM, RUN_CAM_METHOD, RunDir
from igcam_cli.datasets import class_names, dataset_format
from igcam_cli.methods import cams_threshold, measured_threshold
from igcam_cli.options import MAX_SIDE, option
from igcam_cli.refiners import REFINERS, parse_refiners, required_steps
from igcam_cli.runner import DataStepConfig, console
from igcam_cli.steps import STEPS
from igcam_cli.steps.cam import DEFAULT_SCALES, CamConfig, cam
from igcam_cli.steps.eval import EvalConfig, EvalData, evaluate
from igcam_cli.steps.predict import PredictConfig, predict
from igcam_cli.steps.refine import RefineConfig, refine
from igcam_cli.steps.report import ReportConfig, report
from igcam_cli.steps.train_cls import DEFAULT_BATCH_SIZE, DEFAULT_CROP, TrainConfig, train_cls
from igcam_cli.steps.train_seg import SegConfig, train_seg
from igcam_cli.vis import write_overlays

# The best measured with train-cls's defaults on voc-real (302 photos, EfficientNet-Lite0, one
# classifier; bench/RESULTS.md): lpcam's seeds 45.3 mIoU and crf masks 50.0, against 39.3 / 43.0
# for the plain CAM and 38.5 / 42.2 for cpmc; with the CAM, crf 43.1 beat rw+crf's 38.2 (the
# walk helped only the bias-free classifier, to 42.2).
DEFAULT_METHOD = RUN_CAM_METHOD  # named in the layout: train-seg reads its masks by default


@dataclass
class RunConfig(DataStepConfig):
    backbone: str = option("efficientnet-lite0", "Backbone (see train-cls).")
    weights: Path | None = option(None, "ImageNet weight file for the backbone (see train-cls).")
    epochs: int | None = option(None, "Epochs (default: scaled to the data).", min=1)
    batch_size: int = option(DEFAULT_BATCH_SIZE, "Images per batch (see train-cls).", min=1)
    crop: int = option(DEFAULT_CROP, "Training crop side (see train-cls).", min=32,
                       max=MAX_SIDE)
    lr: float | None = option(None, "Backbone learning rate (default per backbone, see "
                                    "train-cls).", above=0)
    scales: tuple[float, ...] = options.scales(DEFAULT_SCALES)
    method: str = option(
        DEFAULT_METHOD, "CAM method (see `igcam cam --method`), with its options as cam takes "
                        "them (--METHOD-...); its maps go to RUN/cam-METHOD (RUN/cam for cam). "
                        "lpcam builds prototypes from the labelled images first and takes about "
                        "2.4x cam's time.")
    threshold: float | None = option(
        None, "Background threshold for the masks. Default: the best of the seed sweep when "
              "the dataset has ground truth, else the one measured best on voc-real for "
              f"--method ({measured_threshold(DEFAULT_METHOD)} for {DEFAULT_METHOD}, see "
              "`igcam refine --help`).")
    refine: str = option(
        DEFAULT_REFINER, "Refiner chain for the masks (see `igcam refine --method`), with its "
                         "refiners' options as refine takes them (--REFINER-...); the steps a "
                         "refiner needs run first (train-aff for rw). With ground truth and "
                         "no --threshold, a chain of walks (rw, par) then crf runs the walks "
                         "first and takes crf's threshold from the sweep of the walked maps.")
    device: str = options.device()
    workers: int = options.workers()
    self_train: int = option(
        0, "Self-training rounds after the masks: each trains a segmentation network on the "
           "current masks (train-seg, into RUN/train-seg-round<k>), labels the training photos "
           "with it, their image labels suppressing absent classes, and refines that with "
           "DenseCRF into the next masks (RUN/predict-round<k>), scored like the others when "
           "there is ground truth. On voc-real one round lifted the default masks from 52.6 "
           "to 55.3 mIoU (bench/RESULTS.md); default 0 while its cost (about half again the "
           "pipeline's CPU time) and its effect on held-out photos are weighed.", min=0,
        max=10)
    seg_epochs: int = option(SegConfig.epochs, "Epochs of each self-training round's network "
                                               "(see train-seg --epochs).", min=1)
    seg_crop: int = option(SegConfig.crop, "Training crop side of those networks (see "
                                           "train-seg --crop).", min=32, max=MAX_SIDE)
    vis: int = option(
        16, "Overlay pictures to write into RUN/vis: with ground truth a third each of the "
            "worst, median and best images by their mask mIoU, else spread evenly over the "
            "images.", min=0)
    strict: bool = options.strict()
    # Options of the CAM methods and of the refiners, by name, as `cam` and `refine` take them.
    method_options: dict[str, Any] = field(default_factory=dict)
    refiner_options: dict[str, Any] = field(default_factory=dict)


def run(config: RunConfig) -> dict[str, dict]:
    """Run the pipeline; returns the eval reports by name (empty without ground truth)."""
    train_cls(TrainConfig(
        run=config.run, dataset=config.dataset, backbone=config.backbone,
        weights=config.weights, epochs=config.epochs, batch_size=config.batch_size,
        crop=config.crop, lr=config.lr, device=config.device, strict=config.strict,
        resume=True))
    cams = cam(CamConfig(run=config.run, dataset=config.dataset, scales=config.scales,
                         method=config.method, device=config.device, strict=config.strict,
                         method_options=config.method_options))
    folders = RunDir(config.run)
    fmt = dataset_format(config.dataset)
    gt = fmt.ground_truth(config.dataset) if fmt is not None else None
    reports: dict[str, dict] = {}
    # eval takes the ground truth, split and class list from the dataset's format, as
    # `igcam eval --voc ROOT` does.
    common = {"dataset": EvalData.of(config.dataset), "workers": config.workers}
    if gt is not None:
        reports["seed"] = evaluate(EvalConfig(
            cams=cams, out=folders.eval_report("seed"),
            name=f"seed ({config.method}, threshold sweep)", **common))
    threshold = config.threshold
    if threshold is None:
        if "seed" in reports:
            threshold, why = reports["seed"]["threshold"], "best of the seed sweep"
        else:
            threshold, why = cams_threshold(cams)
        console.print(f"run: background threshold {threshold} ({why})")
    # The plain CAM's folder is the default of train-aff and refine, left unsaid so that the
    # recipes match those of the same steps run by hand (and of runs made before --method).
    given = None if config.method == PLAIN_CAM else cams
    names = parse_refiners(config.refine)
    # A step a refiner needs takes the run's own settings, the CAM folder to learn from (None:
    # the plain CAM's) and resume, as a rerun of run continues it.
    for needed in required_steps(names):
        make, step = STEPS[needed].load()
        step(make(run=config.run, cams=given, device=config.device, workers=config.workers,
                  strict=config.strict, resume=True))
    walks = names[:next((i for i, n in enumerate(names) if REFINERS[n].sets_labels), len(names))]
    common_refine = {"run": config.run, "device": config.device, "workers": config.workers,
                     "strict": config.strict, "method_options": config.refiner_options}
    source, method = given, config.refine
    if walks and len(walks) < len(names) and gt is not None and config.threshold is None:
        walk = "+".join(walks)
        walked = refine(RefineConfig(cams=given, threshold=threshold, method=walk,
                                     out=folders.masks(config.method, walk),
                                     save_scores=True, **common_refine))
        reports["walk"] = evaluate(EvalConfig(
            cams=RunDir.refined_scores(walked), out=folders.eval_report("walk"),
            name=f"walked maps (refine --method {walk}, threshold sweep)", **common))
        threshold = reports["walk"]["threshold"]
        console.print(f"run: background threshold {threshold} (best of the walked maps' sweep)")
        source, method = RunDir.refined_scores(walked), "+".join(names[len(walks):])
    masks = refine(RefineConfig(cams=source, threshold=threshold, method=method,
                                out=folders.masks(config.method, config.refine),
                                **common_refine))
    if gt is not None:
        reports["mask"] = evaluate(EvalConfig(
            pred=masks, out=folders.eval_report("mask"),
            name=f"pseudo-masks (refine --method {config.refine}, "
                 f"threshold {threshold})", **common))
    for round in range(1, config.self_train + 1):
        masks = _self_train(config, folders, masks, round)
        if gt is not None:
            reports[f"self-train-{round}"] = evaluate(EvalConfig(
                pred=masks, out=folders.eval_report(f"self-train-{round}"),
                name=f"self-training round {round} (train-seg, predict --refine crf)",
                **common))
    written = write_overlays(cams, masks, gt, folders.step("vis"), config.vis,
                             class_names(config.dataset))
    console.print(f"run: {len(written)} overlay pictures in {folders.step('vis')}")
    report(ReportConfig(run=config.run))  # last: it shows every step above
    return reports


def _self_train(config: RunConfig, folders: RunDir, masks: Path, round: int) -> Path:
    """One self-training round: a network trained on ``masks``, its labels of the training
    photos refined by DenseCRF; returns their folder, the next round's masks."""
    trained = train_seg(SegConfig(run=config.run, dataset=config.dataset, masks=masks,
                                  out=folders.train_seg(round), backbone=config.backbone,
                                  epochs=config.seg_epochs, crop=config.seg_crop,
                                  weights=config.weights, device=config.device,
                                  strict=config.strict, resume=True))
    return predict(PredictConfig(run=config.run, dataset=config.dataset, checkpoint=trained,
                                 refine="crf", out=folders.predict(round),
                                 device=config.device, strict=config.strict))
