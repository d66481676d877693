"""Which images a set of pictures shows: the worst, the median and the best by their own mIoU.

The first few ids say nothing about where a method fails, so with ground truth the pictures
are chosen from images ranked by their per-image mIoU; without it they are spread evenly over
the ids. The report's picture grid and the ``vis/`` overlays of ``run`` both choose here, so
both show the same kind of sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from igcam_cli.images import IGNORE
from igcam_cli.metrics import confusion, scores

GROUPS = ("worst", "median", "best")


def image_miou(gt: np.ndarray, pred: np.ndarray, num_classes: int | None = None,
               ignore_uncertain: bool = False) -> float:
    """One image's mIoU over the classes present in its ground truth or its prediction.

    ``num_classes`` (background included) is the evaluation's, when there is one; without it
    the highest label of either map counts, which gives the same score, since a class absent
    from both has an empty union and is left out of the mean. Raises ``ValueError`` for maps of
    different shapes or ground truth with a class beyond ``num_classes``.
    """
    if num_classes is None:
        labels = [int(m[m != IGNORE].max()) for m in (gt, pred) if (m != IGNORE).any()]
        num_classes = max(labels, default=0) + 1
    return scores(confusion(gt, pred, num_classes), ignore_uncertain).miou


def positions(count: int, rows: int, ranked: bool) -> list[tuple[int, str | None]]:
    """Indices into ``count`` (ranked) ids to show in ``rows`` pictures, each with its group:
    a third each of the worst, the median and the best when ranked, else spread evenly."""
    if not ranked:
        return [(int(i), None) for i in np.unique(np.linspace(0, count - 1, rows).round())]
    if count <= rows:
        return [(i, GROUPS[min(2, 3 * i // count)]) for i in range(count)]
    ends = rows // 3
    middle = rows - 2 * ends
    start = count // 2 - middle // 2
    return [*((i, "worst") for i in range(ends)),
            *((i, "median") for i in range(start, start + middle)),
            *((i, "best") for i in range(count - ends, count))]


def pick(score: Mapping[str, float], rows: int) -> list[tuple[str, str | None]]:
    """The ids to show of those scored, worst first, each with its group (ties by id)."""
    ranked = sorted(score, key=lambda i: (score[i], i))
    return [(ranked[p], group) for p, group in positions(len(ranked), rows, True)] \
        if ranked else []


def spread(ids: Sequence[str], rows: int) -> list[tuple[str, str | None]]:
    """``rows`` ids spread evenly over ``ids`` (no ground truth to rank them by)."""
    return [(ids[p], group) for p, group in positions(len(ids), rows, False)] if ids else []
