"""``igcam run``: every step in order into one run directory, skipping finished work.

train-cls -> cam -> [eval of the CAMs] -> refine -> [eval of the masks] -> overlay pictures,
the evals when the dataset has ground truth. Without ``threshold`` the masks use the seed
sweep's best background threshold when there is ground truth (how WSSS papers report seeds),
else IRN's 0.15. Each step keeps its own resumability, so a rerun continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcam_cli.artifacts import RunDir
from igcam_cli.datasets import DatasetSpec, class_file, gt_dir
from igcam_cli.runner import console
from igcam_cli.steps.cam import DEFAULT_SCALES, CamConfig, cam
from igcam_cli.steps.eval import EvalConfig, default_report_path, evaluate
from igcam_cli.steps.refine import DEFAULT_THRESHOLD, RefineConfig, refine
from igcam_cli.steps.train_cls import TrainConfig, train_cls
from igcam_cli.vis import write_overlays


@dataclass
class RunConfig:
    run: Path
    dataset: DatasetSpec
    backbone: str = "efficientnet-lite0"
    weights: Path | None = None
    epochs: int | None = None
    batch_size: int = 16
    crop: int = 512
    lr: float | None = None
    scales: tuple[float, ...] = DEFAULT_SCALES
    threshold: float | None = None
    crf: bool = True
    device: str = "auto"
    workers: int = 1
    vis: int = 16
    strict: bool = False


def run(config: RunConfig) -> dict[str, dict]:
    """Run the pipeline; returns the eval reports by name (empty without ground truth)."""
    train_cls(TrainConfig(
        run=config.run, dataset=config.dataset, backbone=config.backbone,
        weights=config.weights, epochs=config.epochs, batch_size=config.batch_size,
        crop=config.crop, lr=config.lr, device=config.device, strict=config.strict,
        resume=True))
    cams = cam(CamConfig(run=config.run, dataset=config.dataset, scales=config.scales,
                         device=config.device, strict=config.strict))
    gt = gt_dir(config.dataset)
    reports: dict[str, dict] = {}
    common: dict = {}
    if gt is not None:
        assert config.dataset.voc is not None
        split = config.dataset.voc / "ImageSets" / "Segmentation" / f"{config.dataset.split}.txt"
        common = {"gt": gt, "split": split if split.is_file() else None,
                  "classes": class_file(config.dataset), "workers": config.workers}
        reports["seed"] = evaluate(EvalConfig(
            cams=cams, out=default_report_path(config.run, "seed"),
            name="seed (CAM, threshold sweep)", **common))
    threshold = config.threshold
    if threshold is None:
        threshold = reports["seed"]["threshold"] if "seed" in reports else DEFAULT_THRESHOLD
        console.print(f"run: background threshold {threshold} "
                      f"({'best of the seed sweep' if 'seed' in reports else 'default'})")
    masks = refine(RefineConfig(run=config.run, threshold=threshold, crf=config.crf,
                                workers=config.workers, strict=config.strict))
    if gt is not None:
        reports["mask"] = evaluate(EvalConfig(
            pred=masks, out=default_report_path(config.run, "mask"),
            name=f"pseudo-masks (refine{', CRF' if config.crf else ''}, "
                 f"threshold {threshold})", **common))
    written = write_overlays(cams, masks, gt, RunDir(config.run).step("vis"), config.vis)
    console.print(f"run: {len(written)} overlay pictures in {RunDir(config.run).step('vis')}")
    return reports
