"""``igcam train-seg``: a semantic segmentation network trained on the run's pseudo-masks.

The masks are palette PNGs named ``<image id>.png`` (0 background, 1..C classes, 255 ignored):
by default those ``igcam run`` writes (``RUN/refine-lpcam-crf``), else any folder ``--masks``
names (``RUN/refine``, say). Images come from the same data options as every other step. The
network is one of igcam's backbones under a torchvision head (:mod:`igcam_cli.segmentation`),
started from the backbone of the run's classifier (``RUN/train-cls/classifier.pt``) when it has
the same ``--backbone``, else from the backbone's ImageNet weights.

Per image and epoch: a random scale in [0.5, 1.5], a horizontal flip half of the time and a
random ``--crop`` square (padding ignored), seeded by (seed, epoch, image) so that ``--resume``
and any ``--loader-workers`` see the same crops. SGD (or AdamW) with a poly schedule, the head
at ``--head-lr-mult`` times the backbone's rate. What the train-cls contract has, this has:
epoch checkpoints, an exact ``--resume``, ``metrics.json`` per epoch (loss, and pixel accuracy
and mIoU of the training crops against their masks), the manifest, a claim on the folder, and
DistributedDataParallel under torchrun (the same sampler and generator states as train-cls).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import TextColumn
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
    sha256_file,
    write_json,
)
from igcam_cli.backbones import build_backbone
from igcam_cli.datasets import Dataset, Sample, load_dataset
from igcam_cli.distributed import World
from igcam_cli.errors import IgcamError, ImageProblem, print_warning
from igcam_cli.images import IGNORE, read_image, read_label_map
from igcam_cli.models import load_classifier
from igcam_cli.options import MAX_SIDE, option
from igcam_cli.runner import (
    DataStepConfig,
    finite_loss,
    progress_bar,
    readable,
    record_problems,
    trained_already,
    training_claim,
    warn,
)
from igcam_cli.segmentation import (
    HEADS,
    LOSSES,
    SegNet,
    confusion_counts,
    pixel_scores,
    save_segmenter_payload,
    segmentation_loss,
)
from igcam_cli.training.epochs import (
    epoch_loader,
    finish,
    poly_schedule,
    resume,
    save_epoch,
    training_device,
)
from igcam_cli.transforms import seg_augment, to_tensor

# Options that change how training runs, not the network it ends with.
TRAINING_ONLY = frozenset({"resume", "loader_workers", "keep_checkpoints", "out"})
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
SCALE_RANGE = (0.5, 1.5)  # the random rescale of every training image


@dataclass
class SegConfig(DataStepConfig):
    out: Path | None = options.out("RUN/train-seg")
    masks: Path | None = option(
        None, "Folder of pseudo-masks, one palette PNG per image named <image id>.png (0 "
              "background, 1..C classes, 255 ignored). Default: RUN/refine-lpcam-crf, the "
              "masks `igcam run` writes; masks of another chain, e.g. RUN/refine, need this "
              "option.")
    backbone: str = option(
        "efficientnet-lite0", "Backbone under the segmentation head (see train-cls). It starts "
                              "from the run's classifier when that has this backbone.")
    weights: Path | None = option(
        None, "ImageNet weight file for the backbone, used when the run's classifier is "
              "missing or has another backbone.")
    init: Path | None = option(
        None, "Classifier checkpoint whose backbone starts the network. Default: "
              "RUN/train-cls/classifier.pt when it exists and has --backbone, else the "
              "backbone's ImageNet weights.")
    head: str = option(
        "deeplab", "deeplab: torchvision's DeepLabv3 head (ASPP at rates 6, 12, 18 on the "
                   "stride-16 map). lraspp: torchvision's LR-ASPP head over the stride-8 and "
                   "stride-16 maps, about a tenth of the head's cost, for CPUs.",
        choices=HEADS)
    epochs: int = option(
        10, "Epochs. 10 keeps a CPU run of a few hundred images within about an hour at the "
            "default crop (a GPU can afford the 20-50 of published recipes); not yet measured "
            "against more.", min=1)
    batch_size: int = option(
        8, "Crops per batch (at least 2 per process: the head's BatchNorm needs two).", min=2)
    crop: int = option(
        320, "Training crop side, after a random rescale of 0.5-1.5; smaller images are padded "
             "with ignored pixels. 320 rather than the usual 512 because a CPU epoch costs the "
             "square of it.", min=32, max=MAX_SIDE)
    optimizer: str = option(
        "adamw", "adamw, or sgd (momentum 0.9, as DeepLab and IRN train). Measured on 80 "
                 "voc-real photos' CAM + DenseCRF masks (3 epochs, crop 256, the default "
                 "learning rates; bench/RESULTS.md): after 3 epochs adamw's crops reached "
                 "pixel accuracy 0.69 and mIoU 0.35 against their masks, sgd's 0.47 and 0.04 "
                 "(its head, at 10x 0.01, barely learnt; at 1x, 0.59 and 0.17); adamw at "
                 "3e-4: 0.54 and 0.10.", choices=OPTIMIZERS)
    lr: float | None = option(
        None, "Backbone learning rate, poly schedule (power 0.9) over every step. Default: "
              "0.01 for sgd, 1e-4 for adamw.", above=0)
    head_lr_mult: float = option(
        10.0, "Head lr multiplier: the head starts from random weights, the backbone from a "
              "trained one.", above=0)
    weight_decay: float = option(1e-4, "Weight decay.", min=0)
    loss: str = option(
        "ce", "ce: cross-entropy over the pixels not marked 255. balanced: every class in a "
              "batch weighs the same, whatever its pixel count (background covers most pixels "
              "of most masks). Which is better is not yet measured.", choices=LOSSES)
    loader_workers: int = option(2, "Data-loading processes.", min=0, panel=options.MACHINE)
    device: str = options.device()
    seed: int = option(0, "Random seed.")
    resume: bool = option(False, "Continue from the last epoch checkpoint after an interruption.")
    keep_checkpoints: int = 2
    strict: bool = options.strict()
    wait: bool = options.wait()


class _SegImages(TorchDataset):
    def __init__(self, samples: list[Sample], masks: Path, crop: int, seed: int,
                 fill: tuple[float, float, float]) -> None:
        self.samples, self.masks, self.crop, self.seed, self.fill = samples, masks, crop, seed, fill

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item  # from distributed.EpochSampler
        sample = self.samples[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        # One thread, as in a loader worker, so the crops do not depend on --loader-workers.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            image = to_tensor(read_image(sample.image))
            labels = read_label_map(RunDir.image_mask(self.masks, sample.id))
            mask = torch.from_numpy(np.array(labels))  # a writable copy
            return seg_augment(image, mask, self.crop, rng, self.fill, IGNORE, SCALE_RANGE)
        finally:
            torch.set_num_threads(threads)


def mask_folder(config: SegConfig) -> Path:
    """``--masks``, else the run's default pseudo-masks; a folder without masks is an error."""
    run = RunDir(config.run)
    folder = config.masks or run.pseudo_masks()
    if RunDir.image_files(folder, "masks"):
        return folder
    if config.masks is not None:
        what = "is not a folder" if not folder.is_dir() else "holds no mask PNGs"
        raise IgcamError(f"--masks {folder} {what}")
    others = sorted(str(p) for p in config.run.glob("*")
                    if RunDir.kind(p) == "masks" and RunDir.image_files(p, "masks"))
    hint = f" (this run has {', '.join(others)})" if others else ""
    raise IgcamError(f"no pseudo-masks in {folder}, where `igcam run` writes them: pass "
                     f"--masks FOLDER{hint}")


def init_checkpoint(config: SegConfig) -> Path | None:
    """The classifier whose backbone starts the network: ``--init``, else the run's when it
    exists (its backbone is checked against ``--backbone`` when it is loaded)."""
    if config.init is not None:
        if not config.init.is_file():
            raise IgcamError(f"--init {config.init}: no such file")
        return config.init
    default = RunDir(config.run).classifier()
    return default if default.is_file() else None


def checked_masks(dataset: Dataset, masks: Path, record: StepRecord, strict: bool
                  ) -> list[Sample]:
    """The images that have a mask of their size, every mask checked against the class list.

    A mask with a class id past the class list is a one-line error (the masks were made with
    another list, and training would index past the head); a mask whose size differs from its
    image is that image's warning, counted and skipped; an image without a mask is counted.
    """
    kept, missing = [], 0
    for sample, image in readable(dataset.samples, record, strict):
        path = RunDir.image_mask(masks, sample.id)
        if not path.is_file():
            missing += 1
            continue
        try:
            mask = read_label_map(path)
        except ImageProblem as problem:
            warn(record, problem, strict)
            continue
        values = np.unique(mask)
        wrong = values[(values > dataset.num_classes) & (values != IGNORE)]
        if len(wrong):
            raise IgcamError(f"{path} has class id {int(wrong.max())} but the class list has "
                             f"{dataset.num_classes} classes (ids 1..{dataset.num_classes}, 255 "
                             "ignored): pass the --classes the masks were made with")
        if mask.shape != image.shape[:2]:
            record.count("size_mismatch")
            warn(record, f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                         f"{sample.image} is {image.shape[1]}x{image.shape[0]}; skipped", strict)
            continue
        kept.append(sample)
    if missing:
        record.count("no_mask", missing)
        message = (f"{missing} of {len(dataset.samples)} images have no mask in {masks}; "
                   "trained without them")
        record.warn(message)
        print_warning(message)
    return kept


def train_seg(config: SegConfig) -> Path:
    """Train (or resume) the segmentation network; returns the path of its checkpoint.

    Under torchrun every process trains one copy under DistributedDataParallel on its share of
    each global batch; rank 0 alone writes the files and the others wait for it.
    """
    options.check(config)
    world = distributed.world()
    if world.per_rank_batch(config.batch_size) < 2:
        raise IgcamError(f"--batch-size {config.batch_size} gives each of the {world.size} "
                         "processes fewer than 2 crops, which the head's BatchNorm needs")
    run = RunDir(config.run)
    masks = mask_folder(config)
    init = init_checkpoint(config)
    out = config.out or run.train_seg()
    final = run.segmenter(out)
    record = StepRecord("train-seg", jsonable(asdict(config)))
    record.inputs = {"masks": str(masks), "init": str(init) if init else None}
    if init is not None:
        record.inputs["init_sha256"] = sha256_file(init)
    record.extra["recipe"] = recipe_of(record, TRAINING_ONLY)
    if trained_already("train-seg", final, record, type(config)):
        return final
    dataset = load_dataset(config.dataset, strict=config.strict)
    record_problems(record, dataset.problems)
    samples = checked_masks(dataset, masks, record, config.strict)
    if len(samples) < config.batch_size:
        raise IgcamError(f"train-seg needs at least --batch-size {config.batch_size} images "
                         f"with a mask of their size in {masks}; found {len(samples)}")
    remove_stale_temps(ensure_dir(out))
    with training_claim(out, "train-seg", config.wait, holds=world.is_main):
        if world.size == 1 and trained_already("train-seg", final, record, type(config)):
            return final
        device = training_device(config.device, world)
        with world.joined(device):
            return _train(config, record, out, masks, init, dataset, samples, device, world)


def _start(config: SegConfig, init: Path | None, num_classes: int,
           record: StepRecord) -> SegNet:
    """The untrained network: the classifier's backbone, else ImageNet weights."""
    if init is not None:
        classifier, payload = load_classifier(init, torch.device("cpu"))
        if payload["backbone"] == config.backbone:
            record.extra["backbone_from"] = str(init)
            return SegNet(classifier.backbone, num_classes, config.head)
        if config.init is not None:
            raise IgcamError(f"--init {init} has backbone {payload['backbone']}, not "
                             f"--backbone {config.backbone}")
        print_warning(f"{init} has backbone {payload['backbone']}, not {config.backbone}: "
                      "starting from ImageNet weights")
    record.extra["backbone_from"] = "imagenet"
    return SegNet(build_backbone(config.backbone, config.weights), num_classes, config.head)


def _train(config: SegConfig, record: StepRecord, out: Path, masks: Path, init: Path | None,
           dataset: Dataset, samples: list[Sample], device: torch.device,
           world: World) -> Path:
    """The training itself, in every process of a torchrun job."""
    final = RunDir(config.run).segmenter(out)
    torch.manual_seed(config.seed)
    model = _start(config, init, dataset.num_classes, record).to(device)
    world.seed(config.seed)
    if world.launched and device.type == "cuda":  # the head's BatchNorm over every GPU's crops
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    groups = model.param_groups(lr, config.head_lr_mult, config.weight_decay)
    optimizer = (torch.optim.SGD(groups, momentum=0.9) if config.optimizer == "sgd"
                 else torch.optim.AdamW(groups))
    images = _SegImages(samples, masks, config.crop, config.seed,
                        fill=tuple(model.backbone.mean))
    sampler, loader = epoch_loader(images, config.batch_size, config.seed, world,
                                   config.loader_workers, device)
    total_steps = config.epochs * len(loader)
    scheduler = poly_schedule(optimizer, total_steps)
    history, start_epoch = resume("train-seg", out, config.resume, model, optimizer, scheduler,
                                  loader, config.seed, world)
    record.inputs.update({"dataset": config.dataset.describe(), "num_images": len(samples),
                          "images_fingerprint": fingerprint(s.id for s in samples),
                          "class_names": list(dataset.class_names)})
    record.extra["processes"] = world.size
    model.train()
    net = world.wrap(model, device)
    size = dataset.num_classes + 1
    with progress_bar(TextColumn("loss {task.fields[loss]:.4f}"),
                      disable=not world.is_main) as bar:
        task = bar.add_task("train-seg", total=total_steps, loss=float("nan"),
                            completed=start_epoch * len(loader))
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            started, losses = time.perf_counter(), []
            conf = torch.zeros(size, size, dtype=torch.long)
            for batch, target in loader:
                batch = batch.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                logits = net(batch)
                loss = segmentation_loss(logits, target, balanced=config.loss == "balanced")
                finite_loss(loss, "train-seg", epoch + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                conf += confusion_counts(logits.detach(), target, size)
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])))
            shares = world.gather((float(np.mean(losses)), conf))
            accuracy, miou = pixel_scores(sum(s[1] for s in shares))
            history.append({"epoch": epoch + 1, "loss": float(np.mean([s[0] for s in shares])),
                            "pixel_accuracy": accuracy, "miou": miou,
                            "crops": len(sampler) * world.size,
                            "lr": scheduler.get_last_lr()[0],
                            "seconds": round(time.perf_counter() - started, 2)})
            rngs = world.gather(torch.get_rng_state())
            if world.is_main:
                payload = functools.partial(save_segmenter_payload, model, config.backbone,
                                            dataset.class_names)
                save_epoch(out, payload,
                           optimizer, scheduler, loader, history, rngs,
                           config.keep_checkpoints)
                write_json(RunDir.metrics(out), history)
            world.barrier()
    if not world.is_main:
        world.barrier()  # until rank 0 has written the network and the manifest
        return final
    # SyncBatchNorm (CUDA under torchrun) keeps BatchNorm's state names: a SegNet loads it.
    last = history[-1]
    finish(record, out, final, save_segmenter_payload(model, config.backbone,
                                                      dataset.class_names, history=history),
           len(samples), history, f"pixel accuracy {last['pixel_accuracy']:.3f}, mIoU "
                                  f"{last['miou']:.3f} against the masks")
    world.barrier()
    return final
