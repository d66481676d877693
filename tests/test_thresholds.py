"""The background threshold a user without pixel labels gets: the one measured best for the
method that made the CAMs, read from the CAM folder's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcam_cli.artifacts import RunDir, write_cam
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_label_map
from igcam_cli.methods import CAM_THRESHOLD, METHODS, measured_threshold
from igcam_cli.steps.refine import RefineConfig, refine


def test_each_method_s_measured_threshold_and_chains() -> None:
    assert measured_threshold("cam") == CAM_THRESHOLD == 0.40
    assert measured_threshold("lpcam") == 0.65
    assert measured_threshold("cpmc") == 0.30
    assert measured_threshold("gradcampp") == 0.60
    # Grad-CAM, XGrad-CAM and HiRes-CAM give the CAM's maps with a pooled linear head.
    assert measured_threshold("gradcam") == measured_threshold("hirescam") == CAM_THRESHOLD
    # A later stage without a measured threshold keeps its base's.
    unmeasured = next(n for n, m in METHODS.items() if m.threshold is None)
    assert measured_threshold(f"lpcam+{unmeasured}") == 0.65
    assert measured_threshold(f"{unmeasured}+cpmc") == 0.30
    with pytest.raises(IgcamError):
        measured_threshold("unicorn")


def _cam_folder(folder: Path, manifest: dict | None) -> Path:
    """One 16-px CAM file whose class-1 map is 0.5 everywhere, under ``manifest``."""
    folder.mkdir(parents=True)
    image = folder.parent / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    write_cam(folder / "a.npz", np.array([1]), np.full((1, 16, 16), 0.5), np.full(3, 0.9), image)
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(("manifest", "threshold"), [
    ({"step": "cam", "complete": True, "config": {"method": "lpcam"}}, 0.65),
    ({"step": "cam", "complete": True, "config": {"method": "cam"}}, 0.40),
    ({"step": "cam", "complete": True, "config": {"method": "from-a-newer-version"}}, 0.40),
    ({"step": "cam", "complete": False, "config": {"method": "lpcam"}}, 0.40),  # not finished
    ({"step": "refine", "complete": True, "config": {"method": "lpcam"}}, 0.40),
    (None, 0.40),
])
def test_refine_takes_the_cam_method_s_threshold(tmp_path: Path, manifest: dict | None,
                                                 threshold: float) -> None:
    cams = _cam_folder(tmp_path / "cams", manifest)
    out = refine(RefineConfig(run=tmp_path / "run", cams=cams, method="none"))
    recorded = json.loads((out / "manifest.json").read_text())["config"]["threshold"]
    assert recorded == threshold
    # Maps at 0.5 are the class below the threshold and background above it.
    expected = 2 if threshold < 0.5 else 0
    assert np.all(read_label_map(out / "a.png") == expected)


def test_a_given_threshold_wins_over_the_method_s(tmp_path: Path) -> None:
    cams = _cam_folder(tmp_path / "cams",
                       {"step": "cam", "complete": True, "config": {"method": "lpcam"}})
    out = refine(RefineConfig(run=tmp_path / "run", cams=cams, method="none", threshold=0.2))
    assert json.loads((out / "manifest.json").read_text())["config"]["threshold"] == 0.2
    assert np.all(read_label_map(out / "a.png") == 2)


def test_missing_default_cams_name_the_run_s_other_cam_folders(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    _cam_folder(run.cam("lpcam"), None)
    with pytest.raises(IgcamError, match=r"no CAM files in .*cam \(pass --cams .*cam-lpcam\)"):
        refine(RefineConfig(run=run.root, method="none"))
    with pytest.raises(IgcamError, match=r"run `igcam cam` first"):
        refine(RefineConfig(run=tmp_path / "empty", method="none"))
