"""The demo end to end: the classifier must really learn, so its masks beat trivial ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from harness import igcam
from PIL import Image


@pytest.mark.slow
def test_demo_masks_beat_all_background(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    result = igcam("demo", "--run", run, "--images", "96", "--size", "128", "--epochs", "4",
                   "--device", "cpu")
    assert result.returncode == 0, result.stderr
    mask_report = json.loads((run / "eval" / "mask.json").read_text())["report"]
    seed_report = json.loads((run / "eval" / "seed.json").read_text())["report"]
    # All-background scores IoU = background share for background and 0 for the 5 classes.
    gt = np.concatenate([np.array(Image.open(p)).ravel()
                         for p in sorted((run / "data" / "SegmentationClass").glob("*.png"))])
    labelled = gt[gt != 255]
    trivial = float((labelled == 0).mean()) / 6
    assert seed_report["miou"] > 2 * trivial, (seed_report["miou"], trivial)
    assert mask_report["miou"] > 2 * trivial, (mask_report["miou"], trivial)
    assert len(list((run / "vis").glob("*.jpg"))) == 12
    assert "mIoU" in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(str(run / "report.html"))
    assert "seed" in (run / "report.html").read_text()
    masks = json.loads((run / "refine-lpcam-crf" / "manifest.json").read_text())["config"]
    assert masks["method"] == "crf" and Path(masks["cams"]) == run / "cam-lpcam"
