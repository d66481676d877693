"""Segmentation scores with the standard WSSS protocol.

The confusion matrix has two extra columns: "uncertain" (a predicted 255, or any value outside
the classes) and "missing" (no prediction file for the image). Missing pixels always count as
misses of their ground-truth class. Uncertain pixels do too by default, so a method cannot raise
its score by abstaining; ``ignore_uncertain`` drops them instead (IRN's protocol for refined
labels). Ground-truth 255 pixels are always ignored. mIoU is the mean over the classes
whose union is non-empty, as chainercv and IRN compute it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from igcam_cli.images import IGNORE

UNCERTAIN, MISSING = 0, 1  # offsets of the extra columns after the n class columns


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, n + 2) counts: rows ground truth, columns prediction, then uncertain, missing."""
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch {gt.shape} vs {pred.shape}")
    keep = gt != IGNORE
    gt = gt[keep].astype(np.int64)
    pred = pred[keep].astype(np.int64)
    if gt.size and gt.max() >= num_classes:
        raise ValueError(f"ground truth has class {gt.max()} >= {num_classes}")
    pred = np.where(pred < num_classes, pred, num_classes + UNCERTAIN)
    width = num_classes + 2
    return np.bincount(gt * width + pred, minlength=num_classes * width).reshape(num_classes, width)


def missing_confusion(gt: np.ndarray, num_classes: int) -> np.ndarray:
    """The confusion of an image with no prediction: every labelled pixel a miss."""
    gt = gt[gt != IGNORE].astype(np.int64)
    matrix = np.zeros((num_classes, num_classes + 2), dtype=np.int64)
    matrix[:, num_classes + MISSING] = np.bincount(gt, minlength=num_classes)[:num_classes]
    return matrix


@dataclass(frozen=True)
class Scores:
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    valid: np.ndarray  # classes whose union is non-empty

    @property
    def miou(self) -> float:
        return float(self.iou[self.valid].mean()) if self.valid.any() else 0.0

    def as_dict(self, class_names: list[str]) -> dict:
        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {name: (round(float(v), 6) if ok else None)
                    for name, v, ok in zip(class_names, values, self.valid, strict=True)}

        return {"miou": round(self.miou, 6), "iou": per_class(self.iou),
                "precision": per_class(self.precision), "recall": per_class(self.recall)}


def scores(conf: np.ndarray, ignore_uncertain: bool = False) -> Scores:
    """Per-class IoU, precision and recall from a :func:`confusion` matrix."""
    n = conf.shape[0]
    square = conf[:, :n].astype(np.float64)
    tp = np.diag(square)
    fp = square.sum(axis=0) - tp
    fn = square.sum(axis=1) - tp + conf[:, n + MISSING]
    if not ignore_uncertain:
        fn = fn + conf[:, n + UNCERTAIN]
    union = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    return Scores(iou, precision, recall, union > 0)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP (N, C) -> (C,), NaN for classes with no positive sample."""
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = targets[:, c] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positives[order]
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap[c] = precision_at[hits].mean()
    return ap


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    ap = average_precision(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
