"""Refiners of ``igcam refine --method``: CAM maps -> pseudo-masks.

Each refiner is a :class:`~igcam_cli.refiners.base.Refiner` subclass in a module of its own,
registered by one line in :data:`REFINERS` (a :class:`~igcam_cli.registry.Registry`). They
chain with ``+``: ``rw+crf`` walks the CAMs, then DenseCRF labels the walked maps. ``none`` is
the background threshold alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from igcam_cli.errors import IgcamError
from igcam_cli.images import IGNORE
from igcam_cli.masks import seed_labels
from igcam_cli.options import parse_chain
from igcam_cli.refiners.base import Maps, RefineContext, Refiner
from igcam_cli.refiners.crf import DenseCrf
from igcam_cli.refiners.walk import ColourWalk, RandomWalk
from igcam_cli.registry import PartChain, Registry

REFINERS: Registry[type[Refiner]] = Registry("refiner")
REFINERS.register(DenseCrf)
REFINERS.register(RandomWalk)
REFINERS.register(ColourWalk)


def parse_refiners(spec: str) -> list[str]:
    """``none`` -> [], ``rw+crf`` -> ['rw', 'crf']; unknown names and a labelling stage that
    is not last are user errors."""
    names = parse_chain(spec, REFINERS, "none")
    early = [n for n in names[:-1] if REFINERS[n].sets_labels]
    if early:
        raise IgcamError(f"--method: {early[0]} decides the labels, so it must come last "
                         f"(e.g. rw+{early[0]})")
    return names


def required_steps(names: list[str]) -> list[str]:
    """The steps the refiners ``names`` need to have run first (``train-aff`` for ``rw``)."""
    return REFINERS.needs(names)


class RefineChain(PartChain[Refiner]):
    """Refiners applied in turn; the background threshold labels what none of them did.

    Set up on first use in the process that refines: ``refine`` sets up a chain that runs in
    the main process before the first image; a ``--workers`` process gets the chain as built
    (no networks) and sets it up once, on its first image.
    """

    context: RefineContext

    def __init__(self, names: list[str], context: RefineContext,
                 options: Mapping[str, Any]) -> None:
        super().__init__(REFINERS, names, context, options)

    @property
    def in_process(self) -> bool:
        return any(stage.in_process for stage in self.stages)

    def check(self) -> None:
        """Every stage's fast check, in the main process before any image."""
        for stage in self.stages:
            stage.check()

    def __call__(self, maps: Maps, bg_threshold: float | None = None) -> Maps:
        self.setup()
        for stage in self.stages:
            maps = stage(maps)
        labels = maps.labels
        if labels is None:
            labels = seed_labels(maps.cams, maps.classes, self.context.threshold)
        if bg_threshold is not None:  # the uncertainty band, from the final scores
            band = seed_labels(maps.cams, maps.classes, self.context.threshold,
                               bg_threshold) == IGNORE
            labels = np.where(band, IGNORE, labels).astype(np.uint8)
        return replace(maps, labels=labels)


def refiner_help() -> str:
    """The ``--method`` help: one line per registered refiner."""
    return " ".join(f"{name}: {' '.join((refiner.__doc__ or '').split())}"
                    for name, refiner in REFINERS.items())


__all__ = ["REFINERS", "Maps", "RefineChain", "RefineContext", "Refiner", "parse_refiners",
           "refiner_help", "required_steps"]
