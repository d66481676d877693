"""Refiners of ``igcam refine --method``: CAM maps -> pseudo-masks.

Each refiner is a :class:`~igcam_cli.refiners.base.Refiner` subclass in a module of its own,
listed once in :data:`REFINERS`. They chain with ``+``: ``rw+crf`` walks the CAMs, then
DenseCRF labels the walked maps. ``none`` is the background threshold alone.
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

REFINERS: dict[str, type[Refiner]] = {refiner.name: refiner for refiner in (
    DenseCrf,
    RandomWalk,
    ColourWalk,
)}


def parse_refiners(spec: str) -> list[str]:
    """``none`` -> [], ``rw+crf`` -> ['rw', 'crf']; unknown names and a labelling stage that
    is not last are user errors."""
    names = parse_chain(spec, REFINERS, "none")
    early = [n for n in names[:-1] if REFINERS[n].sets_labels]
    if early:
        raise IgcamError(f"--method: {early[0]} decides the labels, so it must come last "
                         f"(e.g. rw+{early[0]})")
    return names


class RefineChain:
    """Refiners applied in turn; the background threshold labels what none of them did."""

    def __init__(self, names: list[str], context: RefineContext,
                 options: Mapping[str, Any]) -> None:
        self.context = context
        self.stages: list[Refiner] = [REFINERS[n](context, options.get(n)) for n in names]

    @property
    def in_process(self) -> bool:
        return any(stage.in_process for stage in self.stages)

    def __call__(self, maps: Maps, bg_threshold: float | None = None) -> Maps:
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
           "refiner_help"]
