"""``igcam cam``: class activation maps for every image of a dataset or a bare folder.

Per image: the CAM at each scale and its horizontal flip (one batch of two), resized to the
image, summed, restricted to the image's labelled classes (or, for unlabelled images, the
classes the classifier predicts), each divided by its maximum. Saved as ``<id>.npz`` with
``classes`` (0-based class ids), ``cams`` (float16, K x H x W), ``scores`` (sigmoid of all
classes) and ``image`` (the source path, so later steps need no dataset options).

``--method NAME`` passes these maps through a method of :mod:`igcam_cli.methods` (one module
each; ``a+b`` chains them), e.g. ``igcam`` fuses them with the class evidence of the image's
object proposals. Methods other than ``cam`` write to ``RUN/cam-<method>`` so that one run
directory holds every method side by side.
"""

from __future__ import annotations

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
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_image
from igcam_cli.methods import MethodContext, build_methods, parse_methods
from igcam_cli.methods.cam import LevelFusionConfig, build_cam, normalise
from igcam_cli.methods.ccam import CcamConfig
from igcam_cli.methods.cpmc import CpmcConfig
from igcam_cli.methods.igcam import GuidanceConfig
from igcam_cli.methods.lpcam import LpcamConfig
from igcam_cli.models import check_classes, load_classifier, resolve_device
from igcam_cli.runner import console, run_per_image
from igcam_cli.steps.train_cls import CLASSIFIER_FILE, _jsonable
from igcam_cli.transforms import to_tensor

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


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
    lpcam: LpcamConfig = field(default_factory=LpcamConfig)  # lpcam: prototypes and k-means
    ccam: CcamConfig = field(default_factory=CcamConfig)  # ccam: hiding rounds and crops
    cpmc: CpmcConfig = field(default_factory=CpmcConfig)  # cpmc: affinity and calibration
    fpn: LevelFusionConfig = field(default_factory=LevelFusionConfig)  # FPN classifiers' levels


def checkpoint_path(config: CamConfig) -> Path:
    """The classifier the maps come from (methods that build artifacts record its hash)."""
    return config.checkpoint or RunDir(config.run).step("train-cls") / CLASSIFIER_FILE


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
    methods = parse_methods(config.method)

    checkpoint = checkpoint_path(config)
    device = resolve_device(config.device)
    model, payload = load_classifier(checkpoint, device)
    model = model.to(memory_format=torch.channels_last)
    dataset = load_dataset(config.dataset, strict=config.strict)
    check_classes(payload, dataset.class_names, checkpoint)
    compute = build_cam(model, config)
    guide = build_methods(methods, MethodContext(model, device, config, dataset))
    out = ensure_dir(cam_dir(config))
    remove_stale_temps(out)
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
        cams, probs = compute(sample, image)
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


def load_cam(path: Path) -> dict[str, np.ndarray]:
    """Read a CAM file written by :func:`cam` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
