"""The bookkeeping of an epoch loop that every epoch-trained step (``train-cls``,
``train-seg``) shares, so that their resume is exact in the same way: the device, the loader
over the epoch sampler, the poly schedule, resuming from the last epoch checkpoint, writing
one, and the end of training. Each step keeps its own network, loss and per-epoch records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from igcam_cli.artifacts import RunDir, StepRecord, read_torch, sha256_file, write_torch
from igcam_cli.distributed import EpochSampler, World, restore_rng
from igcam_cli.errors import IgcamError, console
from igcam_cli.runner import resolve_device, summarise_warnings


def epoch_loader(images: Dataset, batch_size: int, seed: int, world: World, workers: int,
                 device: torch.device) -> tuple[EpochSampler, DataLoader]:
    """The sampler (each process's share of every global batch, reshuffled per epoch) and the
    loader over it. The loader has its own generator, for the workers' seeds: the global one
    drives the network's own randomness (dropout, stochastic depth)."""
    sampler = EpochSampler(len(images), seed, batch_size, world)
    loader = DataLoader(images, batch_size=world.per_rank_batch(batch_size), sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    return sampler, loader


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """Poly decay (power 0.9) over every step, as DeepLab and IRN train."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_steps, power=0.9)


def say(world: World) -> Callable[..., None]:
    """``console.print`` on rank 0; nothing on the other processes, which would repeat it."""
    return console.print if world.is_main else _quiet


def _quiet(*args: object, **kwargs: object) -> None:
    """What the processes other than rank 0 print."""


def resume(step: str, out: Path, wanted: bool, model: nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
           loader: DataLoader, seed: int, world: World) -> tuple[list[dict], int]:
    """The history and the number of epochs done: from the last epoch checkpoint in ``out``
    when ``wanted`` (``--resume``), with the model, optimizer, schedule, loader and random
    generators as they were after that epoch; else nothing done."""
    existing = RunDir.epochs(out)
    world.barrier()  # every process has chosen its checkpoint before rank 0 writes the next
    if existing and not wanted:
        say(world)(f"{step}: starting over; pass --resume to continue from {existing[-1].name}")
    if not (wanted and existing):
        return [], 0
    state = read_torch(existing[-1], "epoch checkpoint")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.generator.set_state(state["loader_rng"])
        restore_rng(state, seed, world)
        history, done = state["history"], state["epoch"]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise IgcamError(f"epoch checkpoint {existing[-1]} is damaged or from another run "
                         f"({type(exc).__name__}); delete it to resume from the one before"
                         ) from None
    say(world)(f"{step}: resuming after epoch {done} from {existing[-1].name}")
    return history, done


def save_epoch(out: Path, payload: Callable[..., dict], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, loader: DataLoader,
               history: list[dict], rngs: list[torch.Tensor], keep: int) -> None:
    """Write the checkpoint of the epoch ``history`` ends with and keep the last ``keep``.
    ``payload(**extra)`` is the step's checkpoint of its network with ``extra`` added;
    ``rngs`` are every process's generator states, rank 0's first."""
    epoch = history[-1]["epoch"]
    extra = {"rank_rngs": rngs} if len(rngs) > 1 else {}
    write_torch(RunDir.epoch(out, epoch), payload(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        loader_rng=loader.generator.get_state(), torch_rng=rngs[0], history=history,
        epoch=epoch, **extra))
    for old in RunDir.epochs(out)[:-max(keep, 1)]:
        old.unlink(missing_ok=True)


def training_device(name: str, world: World) -> torch.device:
    """``--device`` resolved; under torchrun each process must train on its own GPU."""
    device = resolve_device(name)
    if world.launched and device.type == "cuda" and device.index != world.local_rank:
        raise IgcamError(f"--device {name}: under torchrun each process trains on its own GPU "
                         "(cuda:LOCAL_RANK); use --device auto or cuda")
    return device


def finish(record: StepRecord, out: Path, final: Path, payload: dict, images: int,
           history: list[dict], scores: str) -> None:
    """Rank 0's end of training: the network ``payload`` written to ``final``, the manifest
    (counts, history, the network's hash, seconds per epoch) to ``out``, and one line naming
    the last epoch's loss and the step's ``scores``."""
    write_torch(final, payload)
    record.counts["images"] = images
    record.counts["epochs"] = len(history)
    record.extra.update(history=history, checkpoint_sha256=sha256_file(final))
    record.timings["per_epoch_s"] = round(float(np.mean([h["seconds"] for h in history])), 2)
    manifest = record.save(out)
    console.print(f"{record.step}: {len(history)} epochs, final loss "
                  f"{history[-1]['loss']:.4f}, {scores}, {record.counts.get('failed', 0)} "
                  f"images failed -> {final}")
    summarise_warnings(record, manifest)
