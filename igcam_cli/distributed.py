"""Several processes started by torchrun: which one this is, its device, and DDP training.

``torchrun --nproc_per_node N -m igcam_cli STEP ...`` starts N copies of a step with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. Two rules follow from them:

- A per-image step (``propose``, ``cam``, ``refine``, ``influence``'s maps) needs no
  communication: process ``RANK`` of ``WORLD_SIZE`` takes the images ``--shard
  RANK/WORLD_SIZE`` would (:func:`shard`), writes its shard manifest, and no process group
  is started. ``--shard`` with torchrun is refused, since the two would split the images twice.
- ``train-cls`` trains one network with ``DistributedDataParallel`` (:meth:`World.joined`,
  :meth:`World.wrap`): the same global batch split over the processes, gradients averaged,
  rank 0 alone writing files while the others wait at a barrier.

Every process runs on ``cuda:LOCAL_RANK`` when ``--device`` is ``auto`` or ``cuda`` and CUDA is
present (:func:`device_name`), else on the CPU (gloo). Outside torchrun every function here is
the single-process behaviour, so the steps call them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from igcam_cli.artifacts import Shard
from igcam_cli.errors import IgcamError


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise IgcamError(f"environment variable {name}={text!r} is not a number (set by "
                         "torchrun; unset it to run one process)") from None


@dataclass(frozen=True)
class World:
    """This process's place among those torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        world = cls(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
        if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
            raise IgcamError(f"RANK={world.rank}, WORLD_SIZE={world.size} and LOCAL_RANK="
                             f"{world.local_rank} do not describe a process of a torchrun job")
        return world

    @property
    def launched(self) -> bool:
        """Whether several processes share the work (torchrun with more than one)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes a training's files and shows its progress."""
        return self.rank == 0

    def per_rank_batch(self, batch_size: int) -> int:
        """Each process's share of the global batch, which must split evenly: a remainder
        would give the processes unequal batches, and then their averaged gradient is no
        longer the one process's mean over the batch."""
        if batch_size % self.size:
            raise IgcamError(f"--batch-size {batch_size} does not divide by the {self.size} "
                             f"processes torchrun started: pass a multiple of {self.size}")
        return batch_size // self.size

    @contextmanager
    def joined(self, device: torch.device) -> Iterator[None]:
        """The process group for the duration of a training: NCCL on CUDA, gloo on the CPU,
        met through torchrun's ``MASTER_ADDR``/``MASTER_PORT``."""
        if not self.launched:
            yield
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=self.rank, world_size=self.size)
        try:
            yield
        finally:
            dist.destroy_process_group()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DistributedDataParallel (rank 0's weights copied to every process,
        gradients averaged in ``backward``); the module itself for one process.

        Unused parameters are looked for (a graph walk per step, small beside the convs): the
        backbones keep ImageNet heads that no loss reaches, and a stage may leave a part out.
        A parameter no process used keeps no gradient, as in one process.
        """
        if not self.launched:
            return module
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if not self.launched:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait until every process gets here (rank 0 finishing a file the others read)."""
        if self.launched:
            dist.barrier()

    def seed(self, seed: int) -> None:
        """Give ranks above 0 their own stream of the global generator (stochastic depth):
        seeded alike, every process would drop the same blocks for different images. Rank 0
        keeps the one process's stream."""
        if self.rank:
            state = np.random.SeedSequence((seed, self.rank)).generate_state(1)[0]
            torch.manual_seed(int(state))


class EpochSampler(Sampler):
    """One epoch's shuffled indices for this process, each paired with the epoch's number.

    The order comes from the run's seed and the epoch alone, and the epoch travels with every
    index to the loader's workers (persistent workers hold copies of the dataset made in the
    first epoch, so a counter set on the dataset would never reach them): the batches and their
    augmentations are the same whatever ``--loader-workers`` is, and a resumed run continues
    exactly where the uninterrupted one would be.

    Under torchrun it is the DistributedSampler: the epoch's order is cut to whole global
    batches, and process ``rank`` of ``world`` takes every ``world``-th index of it. Its
    ``batch / world`` consecutive indices are then its share of the one process's global batch,
    so the processes' batches together are that batch, step by step, and every process has the
    same number of steps.
    """

    def __init__(self, size: int, seed: int, batch: int, world: World) -> None:
        self.size, self.seed, self.epoch, self.world = size, seed, 0, world
        self.used = size // batch * batch  # the last, incomplete batch is dropped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.used // self.world.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        state = np.random.SeedSequence((self.seed, self.epoch)).generate_state(1)[0]
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(int(state)))
        mine = order[:self.used][self.world.rank::self.world.size]
        return ((self.epoch, index) for index in mine.tolist())


def restore_rng(state: dict, seed: int, world: World) -> None:
    """The global generator (stochastic depth draws from it) where the interrupted run left
    it: each process's own under torchrun; resumed with another number of processes, rank 0
    takes the saved stream and the others start theirs afresh."""
    streams = state.get("rank_rngs") or [state["torch_rng"]]
    if len(streams) == world.size:
        torch.set_rng_state(streams[world.rank])
    else:
        torch.set_rng_state(state["torch_rng"])
        world.seed(seed)


def world() -> World:
    return World.from_env()


def shard(text: str | None) -> Shard:
    """``--shard`` parsed, or under torchrun ``RANK/WORLD_SIZE``: the same split either way."""
    here = world()
    if not here.launched:
        return Shard.parse(text)
    if text:
        raise IgcamError(f"--shard {text} cannot be combined with torchrun, which already "
                         f"splits the images over its {here.size} processes: drop --shard")
    return Shard(here.rank, here.size)


def device_name(name: str) -> str:
    """``--device`` for this process: under torchrun, ``auto`` and ``cuda`` mean
    ``cuda:LOCAL_RANK`` (one GPU per process) when CUDA is present; ``cuda:N`` and ``cpu``
    stay as given."""
    here = world()
    if here.launched and (name == "cuda" or (name == "auto" and torch.cuda.is_available())):
        return f"cuda:{here.local_rank}"
    return name
