"""``igcam train-cls``: the multi-label classifier every CAM method reads.

IRN's recipe: frozen BatchNorm and stem, GAP, bias-free 1x1 classifier, multilabel soft-margin
loss, SGD with a poly schedule and a 10x head learning rate, random resize/flip/crop. Small
datasets get more epochs so that the classifier sees a comparable number of updates.

``--stage 2`` (IG-CAM's second stage) starts from the stage-1 classifier and writes
``RUN/train-cls-stage2/``. Its loss adds to the classification loss, each with its own weight:

- influence re-weighting: each image's classification loss is scaled by
  ``2 sigmoid(-strength * z)``, z its standardised influence on the held-out loss from
  ``igcam influence`` (harmful images count less, helpful ones more, the mean stays near 1);
- multi-scale consistency: the max-normalised CAMs of the batch and of its half-size copy must
  agree (L1 over the labelled classes), which pulls the maps towards scale-stable evidence;
- boundary awareness: CAM gradients are penalised where the image has no edge
  (``|grad CAM| exp(-gamma |grad I|)``), so the maps stop at object boundaries.

``--stage self-sup`` ("Exploring Pixel-level Self-supervision for WSSS", Yoon et al.) also starts
from a classifier and writes ``RUN/train-cls-selfsup/``. A frozen copy of the starting classifier
(the SupportNet) guides the trained one (the MainNet); the loss adds to the classification loss:

- MAM, the multi-scale attentive loss: the MainNet's scale-1 CAMs must match the SupportNet's
  CAMs fused over several scales, weighted by how confident the SupportNet is at each pixel;
- RCM, the regional contrastive loss: MainNet pixel features inside a class's SupportNet CAM region
  (or in the background) are pulled towards that region's mean feature, away from the others'.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import TextColumn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from igcam_cli.artifacts import (
    RunDir,
    StepRecord,
    ensure_dir,
    fingerprint,
    remove_stale_temps,
    sha256_file,
    write_json,
    write_torch,
)
from igcam_cli.datasets import DatasetSpec, Sample, load_dataset
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.images import read_image
from igcam_cli.metrics import mean_average_precision
from igcam_cli.models import (
    CamNet,
    build_backbone,
    check_classes,
    default_lr,
    load_classifier,
    resolve_device,
    save_checkpoint_payload,
)
from igcam_cli.runner import console, progress_bar
from igcam_cli.transforms import resize, scaled_size, to_tensor, train_augment

CLASSIFIER_FILE = "classifier.pt"
STAGE_STEPS = {1: "train-cls", 2: "train-cls-stage2", "self-sup": "train-cls-selfsup"}


@dataclass(frozen=True)
class SelfSupConfig:
    """``--stage self-sup``: weights of RCM and MAM and what the SupportNet's CAMs mark."""

    rcm_weight: float = 0.1  # InfoNCE starts near log(classes + 1), above the other terms
    mam_weight: float = 1.0
    scales: tuple[float, ...] = (0.5, 1.0, 1.5)  # SupportNet scales fused into the MAM target
    threshold: float = 0.5  # fused SupportNet CAM above which a pixel belongs to a class region
    bg_threshold: float = 0.1  # best labelled CAM below which a pixel is background
    temperature: float = 0.1  # InfoNCE temperature over cosine similarities
    pixels: int = 128  # pixels sampled per region and batch: bounds the logits' memory

    def __post_init__(self) -> None:
        if not self.scales or min(self.scales) <= 0:
            raise IgcamError(f"--mam-scales must be positive numbers, got {self.scales}")
        if not 0 <= self.bg_threshold < self.threshold <= 1:
            raise IgcamError("need 0 <= --rcm-bg-threshold < --rcm-threshold <= 1, got "
                             f"{self.bg_threshold} and {self.threshold}")
        if self.temperature <= 0 or self.pixels < 1:
            raise IgcamError("--rcm-temperature must be > 0 and --rcm-pixels >= 1")


@dataclass
class TrainConfig:
    run: Path
    dataset: DatasetSpec
    backbone: str = "efficientnet-lite0"
    weights: Path | None = None
    epochs: int | None = None  # None: scaled to the dataset size (see auto_epochs)
    batch_size: int = 16
    crop: int = 512
    lr: float | None = None  # None: the backbone's default (0.1 ResNet as IRN, 0.01 Lite)
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    loader_workers: int = 2
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    keep_checkpoints: int = 2
    strict: bool = False
    stage: int | str = 1  # a key of STAGE_STEPS
    init: Path | None = None  # stage 2/self-sup: start (default RUN/train-cls/classifier.pt)
    influence: Path | None = None  # stage 2/self-sup: an influence folder holding scores.csv
    influence_strength: float = 1.0
    consistency_weight: float = 1.0
    boundary_weight: float = 0.1
    edge_gamma: float = 10.0
    fpn: bool = False  # stage 1: FPN neck over the backbone's stages (models.CamNet)
    fpn_channels: int = 128  # channels of every pyramid level; the cost grows with its square
    head_bias: bool | None = None  # stage 1: logit bias from the label prior (None: with fpn)
    selfsup: SelfSupConfig = field(default_factory=SelfSupConfig)


def auto_epochs(num_images: int) -> int:
    """IRN trains 5 epochs on 10,582 images; smaller sets get more epochs, 5 to 30."""
    return int(min(30, max(5, math.ceil(5 * 10582 / max(num_images, 1) / 8))))


class _TrainImages(TorchDataset):
    def __init__(self, samples: list[Sample], num_classes: int, crop: int, seed: int,
                 fill: tuple[float, float, float], weights: list[float]) -> None:
        self.samples, self.num_classes, self.crop, self.fill = samples, num_classes, crop, fill
        self.seed, self.weights = seed, weights
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        sample = self.samples[index]
        # Seeded by (seed, epoch, index): a resumed run sees the same augmentations.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = train_augment(to_tensor(read_image(sample.image)), self.crop, rng, self.fill)
        target = torch.zeros(self.num_classes)
        target[list(sample.labels or ())] = 1.0
        return image, target, self.weights[index]


def prior_logits(samples: list[Sample], num_classes: int) -> torch.Tensor:
    """(C,) logits of each class's label frequency, where a classifier's bias starts.

    Started at zero, the bias learns the prior more slowly than the features turn into a
    constant that states it: the FPN classifier stalls at the prior, the plain one starts late
    (models.CamNet).
    """
    counts = torch.zeros(num_classes)
    for sample in samples:
        counts[list(sample.labels or ())] += 1
    frequency = ((counts + 0.5) / (len(samples) + 1)).clamp(1e-3, 1 - 1e-3)
    return torch.logit(frequency)


def _validate(samples: list[Sample], record: StepRecord, strict: bool) -> list[Sample]:
    """Decode every training image once so a corrupt file is reported, not a crash mid-epoch."""
    good = []
    for sample in samples:
        try:
            read_image(sample.image)
        except ImageProblem as problem:
            if strict:
                raise
            record.warn(str(problem))
            record.count("failed")
            console.print(f"[yellow]warning:[/] {problem}")
            continue
        good.append(sample)
    return good


def influence_weights(samples: list[Sample], scores: dict[str, float],
                      strength: float) -> list[float]:
    """``2 sigmoid(-strength * z)`` per sample, z the standardised influence (1 if unscored)."""
    known = np.array([scores[s.id] for s in samples if s.id in scores])
    if len(known) < 2:
        raise IgcamError("--influence scores cover fewer than two training images; run "
                         "`igcam influence` on the same dataset")
    mean, std = known.mean(), known.std() + 1e-12
    return [float(2 / (1 + np.exp(strength * (scores[s.id] - mean) / std)))
            if s.id in scores else 1.0 for s in samples]


def _normalised(cams: torch.Tensor) -> torch.Tensor:
    return cams / cams.flatten(2).max(dim=2).values.clamp_min(1e-5)[..., None, None]


def consistency_loss(model: CamNet, batch: torch.Tensor, cams: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    """L1 between the normalised CAMs of the batch and of its half-size copy (labelled classes)."""
    half = resize(batch, (batch.shape[-2] // 2, batch.shape[-1] // 2))
    small = F.interpolate(model.cam(half), size=cams.shape[-2:], mode="bilinear",
                          align_corners=False)
    diff = (_normalised(cams) - _normalised(small)).abs().mean(dim=(2, 3))
    return (diff * target).sum() / target.sum().clamp_min(1)


def boundary_loss(batch: torch.Tensor, cams: torch.Tensor, target: torch.Tensor,
                  gamma: float) -> torch.Tensor:
    """Edge-aware smoothness: CAM gradients cost where the (downsized) image is flat."""
    image = F.adaptive_avg_pool2d(batch.mean(dim=1, keepdim=True), cams.shape[-2:])
    maps = _normalised(cams)
    loss = 0
    for dim in (2, 3):
        grad_map = maps.diff(dim=dim).abs()
        edge = torch.exp(-gamma * image.diff(dim=dim).abs())
        loss = loss + ((grad_map * edge).mean(dim=(2, 3)) * target).sum()
    return loss / target.sum().clamp_min(1)


def frozen_copy(model: CamNet) -> CamNet:
    """The SupportNet: the starting classifier, kept as it is while its copy trains."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def support_cams(support: CamNet, batch: torch.Tensor, scales: tuple[float, ...],
                 size: tuple[int, int]) -> torch.Tensor:
    """The SupportNet's CAMs at each scale, resized to ``size``, summed and max-normalised.

    Small scales see whole objects, large ones their details: the fused map is the more complete
    and better-placed target that MAM and RCM learn from.
    """
    height, width = batch.shape[-2:]
    fused = sum(F.interpolate(support.cam(resize(batch, scaled_size(height, width, scale))),
                              size=size, mode="bilinear", align_corners=False)
                for scale in scales)
    return _normalised(fused)


def mam_loss(cams: torch.Tensor, guide: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-scale attentive loss: attention-weighted L1 between the normalised CAMs and ``guide``.

    The attention ``|2 guide - 1|`` trusts the SupportNet where it is sure (clearly object or
    clearly not) and ignores its half-way pixels, where the fused, upsampled maps are blurred.
    L1 rather than MSE: its pull stays the same when the maps are already close (MSE's fades)
    and it is not dominated by the few pixels where the SupportNet is plainly wrong.
    """
    attention = (2 * guide - 1).abs()
    diff = (attention * (_normalised(cams) - guide).abs()).sum(dim=(2, 3))
    diff = diff / attention.sum(dim=(2, 3)).clamp_min(1e-5)
    return (diff * target).sum() / target.sum().clamp_min(1)


def rcm_loss(features: torch.Tensor, guide: torch.Tensor, options: SelfSupConfig) -> torch.Tensor:
    """Regional contrastive loss (InfoNCE) of the pixel features against the batch's prototypes.

    ``guide`` (B, C, h, w) holds the SupportNet's normalised CAMs, zero for unlabelled classes.
    A pixel whose best class is above ``threshold`` belongs to that class's region, one below
    ``bg_threshold`` to the background; the rest is left out. Each region's prototype is the mean
    of its L2-normalised features over the batch, detached so that it acts as the target the
    region's pixels move to (parameter-free: the checkpoint stays an ordinary classifier). Up
    to ``pixels`` pixels per region are drawn at random as anchors.
    """
    feats = F.normalize(features, dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    score, label = guide.max(dim=1)
    background = guide.shape[1]
    label = torch.where(score < options.bg_threshold, background, label).flatten()
    keep = ((score < options.bg_threshold) | (score > options.threshold)).flatten()
    feats, label = feats[keep], label[keep]
    onehot = F.one_hot(label, background + 1).to(feats.dtype)
    present = onehot.sum(dim=0) > 0
    if present.sum() < 2:  # a single region has nothing to be contrasted with
        return features.sum() * 0
    prototypes = F.normalize((onehot.T @ feats.detach())[present], dim=1)
    # Random keys in [0, 1) added to the labels group the pixels by region in random order;
    # a pixel's rank inside its group decides whether it is sampled.
    order = torch.argsort(label + torch.rand(len(label), device=label.device))
    grouped = label[order]
    rank = torch.arange(len(grouped), device=label.device) - torch.searchsorted(grouped, grouped)
    anchors = order[rank < options.pixels]
    logits = feats[anchors] @ prototypes.T / options.temperature
    return F.cross_entropy(logits, (present.cumsum(0) - 1)[label[anchors]])


def selfsup_loss(support: CamNet, batch: torch.Tensor, features: torch.Tensor,
                 cams: torch.Tensor, target: torch.Tensor, options: SelfSupConfig
                 ) -> torch.Tensor:
    """The self-sup stage's addition to the classification loss: weighted MAM + RCM."""
    guide = support_cams(support, batch, options.scales, cams.shape[-2:]) * target[..., None, None]
    return (options.mam_weight * mam_loss(cams, guide, target)
            + options.rcm_weight * rcm_loss(features, guide, options))


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("epoch-*.pt"))


def train_cls(config: TrainConfig) -> Path:
    """Train (or resume) the classifier; returns the path of the final checkpoint."""
    if config.stage not in STAGE_STEPS:
        raise IgcamError(f"--stage must be 1, 2 or self-sup, got {config.stage}")
    stage1 = RunDir(config.run).step("train-cls")
    out = ensure_dir(stage1.with_name(STAGE_STEPS[config.stage]))
    remove_stale_temps(out)
    final = out / CLASSIFIER_FILE
    if final.exists():
        console.print(f"train-cls: {final} exists, skipping (delete it to retrain)")
        return final
    dataset = load_dataset(config.dataset, strict=config.strict)
    record = StepRecord("train-cls", _jsonable(asdict(config)))
    for problem in dataset.problems:
        record.warn(problem)
    record.count("failed", len(dataset.problems))
    samples = _validate(dataset.labelled(), record, config.strict)
    if not samples:
        raise IgcamError("train-cls needs images with labels; none found in the dataset")
    epochs = config.epochs or auto_epochs(len(samples))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if config.stage == 1:
        model = CamNet(build_backbone(config.backbone, config.weights), dataset.num_classes,
                       config.fpn_channels if config.fpn else None, config.head_bias)
        if model.classifier.bias is not None:
            model.classifier.bias.data = prior_logits(samples, dataset.num_classes)
        weights = [1.0] * len(samples)
    else:
        init = config.init or stage1 / CLASSIFIER_FILE
        model, payload = load_classifier(init, torch.device("cpu"))
        check_classes(payload, dataset.class_names, init)
        config = replace(config, backbone=payload["backbone"])  # the checkpoint decides
        weights = [1.0] * len(samples)
        if config.influence is not None:
            from igcam_cli.steps.influence import SCORES_FILE, read_scores  # imports this module

            weights = influence_weights(samples, read_scores(config.influence / SCORES_FILE),
                                        config.influence_strength)
        record.extra["sample_weights"] = {"min": min(weights), "max": max(weights)}
    model = model.to(device).to(memory_format=torch.channels_last)
    support = frozen_copy(model) if config.stage == "self-sup" else None  # before any resume
    # Stages 2 and self-sup fine-tune a converged classifier: at the stage-1 rate the first epoch
    # undoes it (stage 2 on coco128: train mAP 0.99 -> 0.78, seed 23.4 -> 23.2), at a tenth it
    # gains (seed 25.7).
    lr = config.lr if config.lr is not None else default_lr(config.backbone) * (
        1.0 if config.stage == 1 else 0.1)
    optimizer = torch.optim.SGD(
        model.param_groups(lr, config.head_lr_mult, config.weight_decay), momentum=0.9)
    images = _TrainImages(samples, dataset.num_classes, config.crop, config.seed,
                          fill=tuple(model.backbone.mean), weights=weights)
    batch_size = min(config.batch_size, len(samples))
    loader = DataLoader(images, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=config.loader_workers, pin_memory=device.type == "cuda",
                        persistent_workers=config.loader_workers > 0,
                        generator=torch.Generator().manual_seed(config.seed))
    total_steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_steps, power=0.9)
    history: list[dict] = []
    start_epoch = 0
    existing = _checkpoints(out)
    if existing and not config.resume:
        console.print(f"train-cls: starting over; pass --resume to continue from "
                      f"{existing[-1].name}")
    if config.resume and existing:
        state = torch.load(existing[-1], map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.generator.set_state(state["loader_rng"])
        torch.set_rng_state(state["torch_rng"])  # stochastic depth draws from it
        history, start_epoch = state["history"], state["epoch"]
        console.print(f"train-cls: resuming after epoch {start_epoch} from {existing[-1].name}")
    record.inputs = {"dataset": config.dataset.describe(), "num_images": len(samples),
                     "images_fingerprint": fingerprint(s.id for s in samples),
                     "class_names": list(dataset.class_names)}
    model.train()
    with progress_bar(TextColumn("loss {task.fields[loss]:.4f}")) as bar:
        task = bar.add_task("train-cls", total=total_steps, loss=float("nan"),
                            completed=start_epoch * len(loader))
        for epoch in range(start_epoch, epochs):
            images.epoch = epoch
            started, losses, scores, targets = time.perf_counter(), [], [], []
            for batch, target, weight in loader:
                batch = batch.to(device, non_blocking=True).to(memory_format=torch.channels_last)
                target = target.to(device, non_blocking=True)
                logits, loss = _stage_loss(model, batch, target, weight.to(device), config,
                                           support)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                scores.append(logits.detach().float().cpu().numpy())
                targets.append(target.cpu().numpy())
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
            train_map = mean_average_precision(np.concatenate(scores), np.concatenate(targets))
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                            "train_map": train_map, "lr": scheduler.get_last_lr()[0],
                            "seconds": round(time.perf_counter() - started, 2)})
            _save_epoch(out, model, optimizer, scheduler, loader, config, dataset.class_names,
                        history)
            write_json(out / "metrics.json", history)
    payload = save_checkpoint_payload(model, config.backbone, dataset.class_names,
                                      history=history)
    write_torch(final, payload)
    record.counts["images"] = len(samples)
    record.counts["epochs"] = epochs
    record.extra.update(history=history, checkpoint_sha256=sha256_file(final))
    record.timings["per_epoch_s"] = round(float(np.mean([h["seconds"] for h in history])), 2)
    record.save(out)
    last = history[-1]
    console.print(f"train-cls: {epochs} epochs, final loss {last['loss']:.4f}, "
                  f"train mAP {last['train_map']:.3f} -> {final}")
    return final


def _stage_loss(model: CamNet, batch: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                config: TrainConfig, support: CamNet | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the loss: classification, weighted in the later stages, plus their CAM terms."""
    if config.stage == 1 and model.neck is not None:
        return pyramid_loss(model, batch, target)
    if config.stage == 1:
        logits = model(batch)
        return logits, F.multilabel_soft_margin_loss(logits, target)
    features = model.features(batch)
    logits = model.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)
    per_sample = F.multilabel_soft_margin_loss(logits, target, reduction="none")
    loss = (per_sample * weight.float()).mean()
    cams = F.relu(F.conv2d(features, model.classifier.weight))
    if support is not None:
        return logits, loss + selfsup_loss(support, batch, features, cams, target,
                                           config.selfsup)
    if config.consistency_weight:
        loss = loss + config.consistency_weight * consistency_loss(model, batch, cams, target)
    if config.boundary_weight:
        loss = loss + config.boundary_weight * boundary_loss(batch, cams, target,
                                                             config.edge_gamma)
    return logits, loss


def pyramid_loss(model: CamNet, batch: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused logits and their loss plus the mean loss of each FPN level's own logits.

    Deep supervision: the fused features alone can lean on one level, but ``igcam cam`` fuses
    the CAMs of every level, so each level must be discriminative by itself with the shared
    classifier. The level terms are averaged, so they weigh as much as the fused one.
    """
    logits, levels = model.pyramid_logits(batch)
    deep = torch.stack([F.multilabel_soft_margin_loss(level, target) for level in levels])
    return logits, F.multilabel_soft_margin_loss(logits, target) + deep.mean()


def _save_epoch(out: Path, model: CamNet, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader,
                config: TrainConfig, class_names: tuple[str, ...], history: list[dict]) -> None:
    epoch = history[-1]["epoch"]
    payload = save_checkpoint_payload(
        model, config.backbone, class_names, optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(), loader_rng=loader.generator.get_state(),
        torch_rng=torch.get_rng_state(),
        history=history, epoch=epoch)
    write_torch(out / f"epoch-{epoch:03d}.pt", payload)
    for old in _checkpoints(out)[:-max(config.keep_checkpoints, 1)]:
        old.unlink(missing_ok=True)


def _jsonable(obj: object) -> object:
    """Config dicts hold Paths; the manifest stores them as strings."""
    return json.loads(json.dumps(obj, default=str))
