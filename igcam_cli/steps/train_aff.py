"""``igcam train-aff``: a class-boundary network learned from the CAMs, for ``refine --method rw``.

IRN's recipe without any pixel label:

1. **Targets** (``RUN/train-aff/labels/<id>.png``, on the stride-4 grid): confident foreground
   where a class's CAM exceeds ``fg_threshold`` and confident background where every CAM is
   below ``bg_threshold``, each cleaned by DenseCRF as IRN does; everything between is 255.
2. **Pairs** within ``radius`` grid cells: same label (background-background or
   class-class) is a positive pair, different labels a negative one, any 255 ignored.
3. **Network**: the classifier's backbone, frozen, with IRN's light edge head over its
   stages (:class:`igcam_cli.affinity.BoundaryNet`). The affinity of a pair is one minus the
   boundary's maximum along the line between them, trained with the balanced loss.

The backbone is frozen, so each image's stage maps are computed once and kept (float16) for
every epoch: an epoch costs the head alone. Checkpoints per epoch make ``--resume`` continue
exactly; the final ``affinity.pt`` holds the whole network (weights only).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import TextColumn

from igcam_cli import options
from igcam_cli.affinity import (
    BoundaryNet,
    PathAffinity,
    affinity_labels,
    affinity_loss,
    affinity_payload,
    grid_size,
)
from igcam_cli.artifacts import (
    RunDir,
    StepRecord,
    ensure_dir,
    fingerprint,
    jsonable,
    read_cam,
    read_torch,
    recipe_of,
    remove_stale_temps,
    sha256_file,
    write_json,
    write_torch,
)
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError
from igcam_cli.images import IGNORE, read_image, read_label_map, save_label_map
from igcam_cli.methods import cams_targets
from igcam_cli.models import load_classifier
from igcam_cli.options import option
from igcam_cli.refiners.base import Maps
from igcam_cli.refiners.crf import CrfOptions, crf_labels, import_crf
from igcam_cli.runner import (
    ImageWork,
    console,
    finite_loss,
    progress_bar,
    resolve_device,
    run_per_image,
    summarise_warnings,
    track,
    trained_already,
    training_claim,
)
from igcam_cli.transforms import to_tensor

# Options that change how training runs, not the network it ends with.
TRAINING_ONLY = frozenset({"resume", "workers"})


@dataclass
class AffinityConfig:
    run: Path = options.run_dir()
    cams: Path | None = option(None, "CAM folder the targets come from (default RUN/cam); "
                                     "any --method's.")
    checkpoint: Path | None = options.checkpoint()
    fg_threshold: float | None = option(
        None, "CAM score above which a pixel is confident foreground. Default: the one "
              "measured for the CAM folder's method (lpcam 0.70), else IRN's 0.30.",
        above=0, below=1)
    bg_threshold: float | None = option(
        None, "Best CAM score below which a pixel is confident background. Default: the one "
              "measured for the CAM folder's method (lpcam 0.45), else IRN's 0.05.",
        above=0, below=1)
    radius: int = option(10, "Pairs within this many grid cells (stride 4) are trained "
                             "(IRN: 10).", min=2, max=16)
    epochs: int = option(5, "Epochs over the images (each costs the head alone).", min=1)
    batch_size: int = option(8, "Images per optimiser step.", min=1)
    lr: float = option(0.1, "Learning rate of the head, poly schedule (IRN: 0.1).", above=0)
    weight_decay: float = option(1e-4, "SGD weight decay.", min=0)
    max_side: int = option(
        1000, "Images are used shrunk to this longer side (0: full size).", min=0)
    seed: int = option(0, "Random seed.")
    device: str = options.device()
    workers: int = options.workers(2)
    resume: bool = option(False, "Continue from the last epoch checkpoint after an "
                                 "interruption.")
    strict: bool = options.strict()
    wait: bool = options.wait()


@dataclass
class _Targets:
    """One image's target labels on the stride-4 grid (picklable for --workers)."""

    config: AffinityConfig
    out: Path

    def load(self, sample: Sample) -> Maps:
        data = read_cam(sample.image)
        return Maps(data["cams"].astype(np.float32), data["classes"].astype(np.int64),
                    Path(str(data["image"])))

    def compute(self, sample: Sample, maps: Maps) -> np.ndarray:
        return target_labels(maps, self.config)

    def write(self, sample: Sample, labels: np.ndarray) -> None:
        save_label_map(RunDir.image_mask(self.out, sample.id), labels)


def target_labels(maps: Maps, config: AffinityConfig) -> np.ndarray:
    """IRN's confident labels, reduced to the stride-4 grid by nearest neighbour."""
    crf = CrfOptions()
    fg = crf_labels(maps, config.fg_threshold, crf, config.max_side)
    bg = crf_labels(maps, config.bg_threshold, crf, config.max_side)
    labels = np.where(fg == 0, IGNORE, fg).astype(np.uint8)
    labels[(fg == 0) & (bg == 0)] = 0
    height, width = grid_size(labels.shape)
    return np.asarray(Image.fromarray(labels).resize((width, height),
                                                     Image.Resampling.NEAREST))


def _check_cam_classes(files: list[Path], num_classes: int, cams: Path) -> None:
    """CAM files of another class list would train on wrong labels: a user error."""
    for path in files:
        classes = read_cam(path, full_size=False)["classes"]
        if len(classes) and int(classes.max()) >= num_classes:
            raise IgcamError(f"{path} has class id {int(classes.max())} but the classifier "
                             f"knows {num_classes} classes: the CAMs in {cams} come from "
                             "another class list")


def _cache(net: BoundaryNet, sample: Sample, labels_dir: Path, paths: PathAffinity,
           max_side: int, device: torch.device
           ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """One image's frozen stage maps (float16) and its pair masks on the stride-4 grid."""
    source = Path(str(read_cam(sample.image, full_size=False)["image"]))
    image = to_tensor(read_image(source, max_side or None)).to(device)
    stages = [s.half().cpu() for s in net.stages(image[None])]
    labels = read_label_map(RunDir.image_mask(labels_dir, sample.id))
    labels = torch.from_numpy(labels.astype(np.int64))
    size = grid_size(image.shape[-2:])
    if tuple(labels.shape) != size:  # targets made at another --max-side
        labels = torch.nn.functional.interpolate(
            labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return stages, affinity_labels(labels, paths.offsets)


def _target_statistics(labels_dir: Path, samples: list[Sample]) -> dict[str, float]:
    """Shares of grid cells that are confident background, foreground and ignored."""
    counts = np.zeros(3)
    for sample in samples:
        labels = read_label_map(RunDir.image_mask(labels_dir, sample.id))
        counts += [(labels == 0).sum(), ((labels > 0) & (labels != IGNORE)).sum(),
                   (labels == IGNORE).sum()]
    share = counts / max(counts.sum(), 1)
    return {"background": round(float(share[0]), 4), "foreground": round(float(share[1]), 4),
            "ignored": round(float(share[2]), 4)}


def train_aff(config: AffinityConfig) -> Path:
    """Make the targets, train the boundary head; returns the final checkpoint's path."""
    options.check(config)
    run = RunDir(config.run)
    cams = config.cams or run.cam()
    files = RunDir.image_files(cams)
    if not files:
        raise run.no_cams(cams)
    # The targets' thresholds follow the maps' scale, as refine's threshold does; the
    # manifest records the values used and where they came from.
    (fg, bg), origin = cams_targets(cams)
    config = replace(config,
                     fg_threshold=fg if config.fg_threshold is None else config.fg_threshold,
                     bg_threshold=bg if config.bg_threshold is None else config.bg_threshold)
    if config.bg_threshold >= config.fg_threshold:
        raise IgcamError(f"--bg-threshold ({config.bg_threshold}) must be below "
                         f"--fg-threshold ({config.fg_threshold})")
    checkpoint = config.checkpoint or run.classifier()
    device = resolve_device(config.device)
    classifier, payload = load_classifier(checkpoint, device)
    out = ensure_dir(run.step("train-aff"))
    # One training per folder at a time; after waiting for another, its affinities may be
    # the ones asked for (trained_already below).
    with training_claim(out, "train-aff", config.wait):
        remove_stale_temps(out)
        final = run.affinity()
        record = StepRecord("train-aff", jsonable(asdict(config)))
        record.inputs = {"cams": str(cams), "num_cams": len(files),
                         "images_fingerprint": fingerprint(p.stem for p in files),
                         "checkpoint_sha256": sha256_file(checkpoint),
                         "target_thresholds_from": origin}
        record.extra["recipe"] = recipe_of(record, TRAINING_ONLY)
        if trained_already("train-aff", final, record, type(config)):
            return final
        _check_cam_classes(files, len(payload["class_names"]), cams)
        import_crf()
        labels_dir = ensure_dir(run.affinity_labels())
        remove_stale_temps(labels_dir)
        samples = [Sample(p.stem, p) for p in files]
        targets = _Targets(config, labels_dir)
        run_per_image(samples, ImageWork(targets.load, targets.compute, targets.write),
                      lambda s: RunDir.image_mask(labels_dir, s.id), record, overwrite=False,
                      strict=config.strict, workers=config.workers,
                      io_workers=options.DEFAULT_IO_WORKERS, description="train-aff targets")
        samples = [s for s in samples if RunDir.image_mask(labels_dir, s.id).exists()]
        if not samples:
            raise IgcamError("train-aff: no image got targets")

        torch.manual_seed(config.seed)
        net = BoundaryNet(classifier.backbone).to(device)
        paths = PathAffinity(config.radius, half=True)
        cache = [_cache(net, s, labels_dir, paths, config.max_side, device)
                 for s in track(samples, len(samples), "train-aff features")]
        head = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(head, lr=config.lr, momentum=0.9,
                                    weight_decay=config.weight_decay)
        steps_per_epoch = -(-len(cache) // config.batch_size)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(
            optimizer, config.epochs * steps_per_epoch, power=0.9)
        history: list[dict] = []
        start_epoch = 0
        existing = RunDir.epochs(out)
        if config.resume and existing:
            state = read_torch(existing[-1], "epoch checkpoint")
            try:
                if state["backbone"] != payload["backbone"]:
                    raise ValueError("backbone")
                net.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                history, start_epoch = state["history"], state["epoch"]
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise IgcamError(f"epoch checkpoint {existing[-1]} is damaged or from another "
                                 f"run ({type(exc).__name__} {exc}); delete it to resume from "
                                 "the one before") from None
        net.train()
        with progress_bar(TextColumn("loss {task.fields[loss]:.4f}")) as bar:
            task = bar.add_task("train-aff", total=config.epochs * steps_per_epoch,
                                completed=start_epoch * steps_per_epoch, loss=float("nan"))
            for epoch in range(start_epoch, config.epochs):
                started, losses = time.perf_counter(), []
                agree = np.zeros(3)
                counted = np.zeros(3)
                order = np.random.default_rng((config.seed, epoch)).permutation(len(cache))
                for first in range(0, len(order), config.batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    batch = order[first: first + config.batch_size]
                    for index in batch:
                        stages, pairs = cache[index]
                        size = pairs[0].shape[-2:]
                        boundary = torch.sigmoid(net.head_logits(
                            [s.to(device).float() for s in stages], size))
                        affinity = paths(boundary)[0]
                        masks = [m.to(device) for m in pairs]
                        loss = finite_loss(affinity_loss(affinity, *masks) / len(batch),
                                           "train-aff", epoch + 1)
                        loss.backward()
                        losses.append(loss.item() * len(batch))
                        with torch.no_grad():
                            for k, (mask, want) in enumerate(zip(masks, (True, True, False),
                                                                 strict=True)):
                                agree[k] += ((affinity > 0.5) == want)[mask].sum().item()
                                counted[k] += mask.sum().item()
                    optimizer.step()
                    scheduler.step()
                    bar.update(task, advance=1, loss=float(np.mean(losses[-50:])))
                accuracy = (agree / np.maximum(counted, 1)).tolist()  # plain floats: weights_only
                history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                                "accuracy_bg": accuracy[0], "accuracy_fg": accuracy[1],
                                "accuracy_neg": accuracy[2], "lr": scheduler.get_last_lr()[0],
                                "seconds": round(time.perf_counter() - started, 2)})
                write_torch(RunDir.epoch(out, epoch + 1), {
                    "backbone": payload["backbone"], "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "history": history, "epoch": epoch + 1})
                for old in RunDir.epochs(out)[:-2]:  # the last two: one may be cut mid-write
                    old.unlink(missing_ok=True)
                write_json(RunDir.metrics(out), history)
        write_torch(final, affinity_payload(net.eval(), payload["backbone"],
                                            record.inputs["checkpoint_sha256"], history=history))
        record.counts["images"] = len(cache)
        record.counts["epochs"] = config.epochs
        record.extra.update(history=history, checkpoint_sha256=sha256_file(final),
                            targets=_target_statistics(labels_dir, samples))
        manifest = record.save(out)
        last = history[-1]
        console.print(f"train-aff: {config.epochs} epochs, loss {last['loss']:.4f}, pair "
                      f"accuracy bg {last['accuracy_bg']:.3f} fg {last['accuracy_fg']:.3f} "
                      f"neg {last['accuracy_neg']:.3f} -> {final}")
        summarise_warnings(record, manifest)
        return final
