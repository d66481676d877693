"""``igcam train-cls``: the multi-label classifier every CAM method reads.

IRN's recipe: frozen BatchNorm and stem, GAP, bias-free 1x1 classifier, multilabel soft-margin
loss, SGD with a poly schedule and a 10x head learning rate, random resize/flip/crop. Small
datasets get more epochs so that the classifier sees a comparable number of updates.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
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
    default_lr,
    resolve_device,
    save_checkpoint_payload,
)
from igcam_cli.runner import console, progress_bar
from igcam_cli.transforms import to_tensor, train_augment

CLASSIFIER_FILE = "classifier.pt"


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


def auto_epochs(num_images: int) -> int:
    """IRN trains 5 epochs on 10,582 images; smaller sets get more epochs, 5 to 30."""
    return int(min(30, max(5, math.ceil(5 * 10582 / max(num_images, 1) / 8))))


class _TrainImages(TorchDataset):
    def __init__(self, samples: list[Sample], num_classes: int, crop: int, seed: int,
                 fill: tuple[float, float, float]) -> None:
        self.samples, self.num_classes, self.crop, self.fill = samples, num_classes, crop, fill
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        # Seeded by (seed, epoch, index): a resumed run sees the same augmentations.
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = train_augment(to_tensor(read_image(sample.image)), self.crop, rng, self.fill)
        target = torch.zeros(self.num_classes)
        target[list(sample.labels or ())] = 1.0
        return image, target


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


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("epoch-*.pt"))


def train_cls(config: TrainConfig) -> Path:
    """Train (or resume) the classifier; returns the path of the final checkpoint."""
    out = ensure_dir(RunDir(config.run).step("train-cls"))
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
    model = CamNet(build_backbone(config.backbone, config.weights), dataset.num_classes)
    model = model.to(device).to(memory_format=torch.channels_last)
    lr = config.lr if config.lr is not None else default_lr(config.backbone)
    optimizer = torch.optim.SGD(
        model.param_groups(lr, config.head_lr_mult, config.weight_decay), momentum=0.9)
    images = _TrainImages(samples, dataset.num_classes, config.crop, config.seed,
                          fill=tuple(model.backbone.mean))
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
            for batch, target in loader:
                batch = batch.to(device, non_blocking=True).to(memory_format=torch.channels_last)
                target = target.to(device, non_blocking=True)
                logits = model(batch)
                loss = F.multilabel_soft_margin_loss(logits, target)
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
    record.extra = {"history": history, "checkpoint_sha256": sha256_file(final)}
    record.timings["per_epoch_s"] = round(float(np.mean([h["seconds"] for h in history])), 2)
    record.save(out)
    last = history[-1]
    console.print(f"train-cls: {epochs} epochs, final loss {last['loss']:.4f}, "
                  f"train mAP {last['train_map']:.3f} -> {final}")
    return final


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
