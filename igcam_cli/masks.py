"""Label maps from class maps: the background threshold every step applies the same way.

``refine`` turns CAMs into seeds with it and ``eval`` sweeps it over CAM files, so both must
agree on what a pixel's label is: the best class where its score is above the threshold, else
background (0), with an optional uncertainty band (255) below.
"""

from __future__ import annotations

import numpy as np

from igcam_cli.images import IGNORE


def peak_labels(cams: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the best class score and its label value (class id + 1); zeros if no class."""
    if len(classes) == 0:
        return np.zeros(cams.shape[1:], np.float32), np.zeros(cams.shape[1:], np.uint8)
    return cams.max(axis=0), (classes[cams.argmax(axis=0)] + 1).astype(np.uint8)


def seed_labels(cams: np.ndarray, classes: np.ndarray, threshold: float,
                bg_threshold: float | None = None) -> np.ndarray:
    """Label map (H, W): 0 background, class id + 1 foreground, 255 in the uncertainty band."""
    peak, best = peak_labels(cams, classes)
    labels = np.where(peak > threshold, best, 0).astype(np.uint8)
    if bg_threshold is not None:
        labels[(peak > bg_threshold) & (peak <= threshold)] = IGNORE
    return labels
