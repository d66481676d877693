"""``igcam cam``: class activation maps for every image of a dataset or a bare folder.

Per image: the CAM at each scale and its horizontal flip (one batch of two), resized to the
image, summed, restricted to the image's labelled classes (or, for unlabelled images, the
classes the classifier predicts), each divided by its maximum. Saved as ``<id>.npz`` with
``classes`` (0-based class ids), ``cams`` (float16, K x H x W), ``scores`` (sigmoid of all
classes) and ``image`` (the source path, so later steps need no dataset options).

``--method igcam`` fuses these maps with the class evidence of the image's object proposals
(``igcam propose``), optionally weighted by spatial influence (``igcam influence``); see
:mod:`igcam_cli.methods.igcam`. Other methods write to ``RUN/cam-<method>`` so that one run
directory holds every method side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from igcam_cli.artifacts import (
    RunDir,
    Shard,
    StepRecord,
    ensure_dir,
    fingerprint,
    remove_stale_temps,
    sha256_file,
    write_npz,
)
from igcam_cli.datasets import DatasetSpec, Sample, load_dataset
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import read_image
from igcam_cli.methods.igcam import GuidanceConfig
from igcam_cli.models import CamNet, check_classes, load_classifier, resolve_device
from igcam_cli.runner import console, run_per_image
from igcam_cli.steps.train_cls import CLASSIFIER_FILE, _jsonable
from igcam_cli.transforms import resize, scaled_size, to_tensor

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)
METHODS = ("cam", "igcam")


@dataclass
class CamConfig:
    run: Path
    dataset: DatasetSpec
    checkpoint: Path | None = None  # default RUN/train-cls/classifier.pt
    out: Path | None = None  # default RUN/cam
    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True
    use_labels: bool = True
    score_threshold: float = 0.5
    device: str = "auto"
    overwrite: bool = False
    shard: str | None = None
    strict: bool = False
    method: str = "cam"
    proposals: Path | None = None  # igcam: default RUN/propose
    influence: Path | None = None  # igcam: influence folder whose maps weight the boxes
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)


@torch.inference_mode()
def multiscale_cam(model: CamNet, image: torch.Tensor, scales: tuple[float, ...],
                   flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) summed CAMs at image resolution and (C,) class probabilities at scale 1.

    ``image`` is (3, H, W) in [0, 1] on the model's device. Probabilities come from the
    scale-1 (or first) pass so that unlabelled images get their classes for free.
    """
    _, height, width = image.shape
    total = None
    probs = None
    for scale in scales:
        batch = resize(image[None], scaled_size(height, width, scale))
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        batch = batch.contiguous(memory_format=torch.channels_last)
        features = model.features(batch)
        if probs is None or scale == 1.0:
            pooled = features.mean(dim=(2, 3), keepdim=True)
            probs = torch.sigmoid(model.classifier(pooled).flatten(1)).mean(0)
        cams = torch.relu(torch.nn.functional.conv2d(features, model.classifier.weight))
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        cams = resize(cams.float(), (height, width))[0]
        total = cams if total is None else total + cams
    assert total is not None and probs is not None
    return total, probs


def normalise(cams: torch.Tensor) -> torch.Tensor:
    """Divide each class map by its maximum (1e-5 floor, as IRN)."""
    peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-5)
    return cams / peak.view(-1, 1, 1)


def cam_dir(config: CamConfig) -> Path:
    if config.out is not None:
        return config.out
    folder = RunDir(config.run).step("cam")
    return folder if config.method == "cam" else folder.with_name(f"cam-{config.method}")


def cam(config: CamConfig) -> Path:
    """Write one CAM file per image; finished images are skipped unless ``overwrite``."""
    shard = Shard.parse(config.shard)
    if not config.scales or any(s <= 0 for s in config.scales):
        raise IgcamError("--scales must be positive numbers, e.g. 1.0,0.5,1.5,2.0")
    if config.method not in METHODS:
        raise IgcamError(f"--method must be one of {', '.join(METHODS)}, got {config.method!r}")

    checkpoint = config.checkpoint or RunDir(config.run).step("train-cls") / CLASSIFIER_FILE
    device = resolve_device(config.device)
    model, payload = load_classifier(checkpoint, device)
    guide = _guidance(config, model) if config.method == "igcam" else None
    out = ensure_dir(cam_dir(config))
    remove_stale_temps(out)
    model = model.to(memory_format=torch.channels_last)
    dataset = load_dataset(config.dataset, strict=config.strict)
    check_classes(payload, dataset.class_names, checkpoint)
    record = StepRecord("cam", _jsonable(asdict(config)))
    for problem in dataset.problems:
        record.warn(problem)
    record.count("failed", len(dataset.problems))
    samples = shard.select(dataset.samples)
    record.inputs = {"dataset": config.dataset.describe(), "checkpoint": str(checkpoint),
                     "checkpoint_sha256": sha256_file(checkpoint),
                     "images_fingerprint": fingerprint(s.id for s in samples)}

    def one(sample: Sample) -> None:
        image = to_tensor(read_image(sample.image)).to(device)
        cams, probs = multiscale_cam(model, image, config.scales, config.flip)
        if config.use_labels and sample.labels is not None:
            classes = list(sample.labels)
        else:
            classes = torch.nonzero(probs >= config.score_threshold).flatten().tolist()
        maps = normalise(cams[classes]) if classes else cams[:0]
        if guide is not None:
            maps = guide(sample, image, maps, classes)
        write_npz(out / f"{sample.id}.npz", classes=np.array(classes, dtype=np.int16),
                  cams=maps.cpu().numpy().astype(np.float16),
                  scores=probs.cpu().numpy().astype(np.float32),
                  image=np.array(str(sample.image.resolve())))

    run_per_image(samples, one, lambda s: out / f"{s.id}.npz", record,
                  overwrite=config.overwrite, strict=config.strict, workers=1,
                  description="cam")
    record.save(out, shard)
    console.print(f"cam: {record.counts.get('processed', 0)} written, "
                  f"{record.counts.get('skipped_done', 0)} already done, "
                  f"{record.counts.get('failed', 0)} failed -> {out}")
    return out


def _guidance(config: CamConfig, model: CamNet
              ) -> Callable[[Sample, torch.Tensor, torch.Tensor, list[int]], torch.Tensor]:
    """The igcam fusion for one image, reading its proposals (and influence maps) from disk."""
    from igcam_cli.methods.igcam import BOX_SCORES, instance_guided
    from igcam_cli.steps.influence import load_influence_map
    from igcam_cli.steps.propose import load_proposals

    if config.guidance.box_scores not in BOX_SCORES:
        raise IgcamError(f"--box-scores must be one of {', '.join(BOX_SCORES)}")
    if not 0 <= config.guidance.box_weight <= 1:
        raise IgcamError("--box-weight must be between 0 and 1")
    proposals = config.proposals or RunDir(config.run).step("propose")
    if not proposals.is_dir():
        raise IgcamError(f"--method igcam needs proposals: {proposals} not found "
                         "(run `igcam propose` first or pass --proposals DIR)")
    maps_dir = None if config.influence is None else config.influence / "maps"
    if maps_dir is not None and not maps_dir.is_dir():
        raise IgcamError(f"{maps_dir} not found (run `igcam influence` first)")

    def guide(sample: Sample, image: torch.Tensor, cams: torch.Tensor,
              classes: list[int]) -> torch.Tensor:
        path = proposals / f"{sample.id}.npz"
        if not path.is_file():
            raise ImageProblem(f"{sample.image}: no proposals in {proposals}")
        boxes = torch.from_numpy(load_proposals(path)["boxes"])
        influence = None
        if maps_dir is not None:
            stored = load_influence_map(maps_dir / f"{sample.id}.npz")
            rows = [stored["classes"].tolist().index(c) for c in classes]
            influence = torch.from_numpy(stored["maps"][rows].astype(np.float32))
        return instance_guided(model, image, cams, classes, boxes, config.guidance, influence)

    return guide


def load_cam(path: Path) -> dict[str, np.ndarray]:
    """Read a CAM file written by :func:`cam` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
