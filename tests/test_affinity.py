"""Affinity targets, path affinities, the random walk, and the train-aff / refine rw steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import copy_run, igcam, ok, one_line_error
from PIL import Image

from igcam_cli.affinity import (
    PathAffinity,
    affinity_labels,
    dense_random_walk,
    disk_offsets,
    propagate,
    random_walk,
    transition,
)
from igcam_cli.artifacts import RunDir, write_cam, write_torch
from igcam_cli.errors import IgcamError
from igcam_cli.images import IGNORE
from igcam_cli.refiners import RefineChain, RefineContext, parse_refiners
from igcam_cli.refiners.base import Maps


def test_disk_offsets_half_holds_one_of_each_pair() -> None:
    full, half = disk_offsets(3, half=False), disk_offsets(3, half=True)
    assert len(full) == 2 * len(half) and (0, 0) not in full
    assert all((-dy, -dx) not in half for dy, dx in half)
    assert max(dy * dy + dx * dx for dy, dx in full) < 9


def test_affinity_labels_on_a_hand_made_map() -> None:
    # 0 background, 1 and 2 classes, 255 ignored; pairs to the right neighbour only.
    labels = torch.tensor([[0, 0, 1, 1, 255, 2]])
    bg, fg, neg = (m[0, 0].tolist() for m in affinity_labels(labels, [(0, 1)]))
    assert bg == [True, False, False, False, False, False]  # 0-0
    assert fg == [False, False, True, False, False, False]  # 1-1
    assert neg == [False, True, False, False, False, False]  # 0-1; 1-255, 255-2 and the edge
    assert not any(bg[4:] + fg[4:] + neg[4:])  # ignored: 255 at either end, or off the map


def _wall(height: int = 6, width: int = 8, column: int = 4) -> torch.Tensor:
    boundary = torch.zeros(1, 1, height, width)
    boundary[..., column] = 1.0
    return boundary


def test_path_affinity_is_cut_by_a_boundary_between_the_ends() -> None:
    paths = PathAffinity(3, half=False)
    affinity = paths(_wall())[0]
    k = paths.offsets.index((0, 2))
    assert affinity[k, 2, 0] == 1  # columns 0 -> 2: no boundary crossed
    assert affinity[k, 2, 3] == 0  # columns 3 -> 5: the wall at 4 lies between
    assert affinity[k, 2, 7] == 0  # the partner is off the map


def test_random_walk_spreads_a_peak_over_its_region_only() -> None:
    paths = PathAffinity(3, half=False)
    affinity = paths(_wall(8, 16, 8))[0]
    grid = torch.zeros(1, 8, 16)
    grid[0, 4, 2] = 1.0  # a peak in the left region
    walked = random_walk(grid, transition(affinity, paths.offsets, beta=10), 64)
    left, right = walked[0, :, :8], walked[0, :, 9:]
    assert left.min() > 0.1 * left.max()  # the whole left region is reached
    assert right.max() < 1e-6  # nothing crosses the boundary


def test_sparse_walk_equals_dense_squarings() -> None:
    affinity = PathAffinity(3, half=False)(torch.rand(1, 1, 10, 12))[0]
    offsets = disk_offsets(3, half=False)
    matrix = transition(affinity, offsets, beta=2)
    scores = torch.rand(2, 10, 12)
    torch.testing.assert_close(random_walk(scores, matrix, 16),
                               dense_random_walk(scores, matrix, 16), rtol=1e-4, atol=1e-6)


def test_propagate_keeps_the_image_size_and_normalises() -> None:
    paths = PathAffinity(3, half=False)
    cams = torch.zeros(2, 30, 62)
    cams[0, 10, 5] = cams[1, 20, 50] = 1.0
    out = propagate(cams, paths(_wall(8, 16, 8))[0], paths.offsets, 10, 32)
    assert out.shape == cams.shape
    torch.testing.assert_close(out.amax(dim=(1, 2)), torch.ones(2))


def _two_regions(tmp_path: Path) -> Maps:
    """A photo of two flat colours (left dark, right light) with a CAM peak on the left."""
    image = np.zeros((48, 96, 3), np.uint8)
    image[:, 48:] = 220
    Image.fromarray(image).save(tmp_path / "photo.png")
    cams = np.zeros((1, 48, 96), np.float32)
    cams[0, 20:28, 8:16] = 1.0
    return Maps(cams, np.array([4]), tmp_path / "photo.png")


def test_par_spreads_a_peak_over_its_colour_region(tmp_path: Path) -> None:
    context = RefineContext(RunDir(tmp_path), torch.device("cpu"), 0.15, 0)
    labels = RefineChain(["par"], context, {})(_two_regions(tmp_path)).labels
    assert (labels[:, :44] == 5).mean() > 0.95  # class id 4 -> label 5, over the left region
    assert (labels[:, 52:] == 0).all()  # and none of it on the right


def test_refine_chains_are_parsed_and_checked() -> None:
    assert parse_refiners("none") == [] and parse_refiners("rw+crf") == ["rw", "crf"]
    with pytest.raises(IgcamError, match="must come last"):
        parse_refiners("crf+rw")
    with pytest.raises(IgcamError, match="--method"):
        parse_refiners("walk")


ARGS = ("--epochs", "2", "--batch-size", "4", "--radius", "4", "--workers", "1",
        "--device", "cpu")


# A confident foreground above 0.8 rather than IRN's 0.30, so that the tiny classifier's
# broad CAMs leave an ignored band between the two targets whatever its training's rounding.
TARGETS = ("--fg-threshold", "0.8")


def test_train_aff_resumes_to_the_uninterrupted_weights(cam_run: Path, tmp_path: Path) -> None:
    run = copy_run(cam_run, tmp_path / "whole", "train-cls", "cam")
    result = igcam("train-aff", "--run", run, *ARGS, *TARGETS)
    assert result.returncode == 0, result.stderr
    folder = run / "train-aff"
    whole = torch.load(folder / "affinity.pt", weights_only=True)
    labels = [np.array(Image.open(p)) for p in sorted((folder / "labels").glob("*.png"))]
    assert len(labels) == 24 and {0, IGNORE} <= set(np.unique(np.concatenate(
        [x.ravel() for x in labels])))
    # Interrupted during epoch 2: the run directory as it was after epoch 1.
    other = tmp_path / "run"
    shutil.copytree(run, other)
    for name in ("affinity.pt", "manifest.json", "epoch-002.pt"):
        (other / "train-aff" / name).unlink()
    result = igcam("train-aff", "--run", other, *ARGS, *TARGETS, "--resume")
    assert result.returncode == 0, result.stderr
    resumed = torch.load(other / "train-aff" / "affinity.pt", weights_only=True)
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

    result = igcam("refine", "--run", run, "--method", "rw", "--device", "cpu",
                   "--rw-steps", "8")
    assert result.returncode == 0, result.stderr
    masks = sorted((run / "refine-rw").glob("*.png"))
    assert len(masks) == 24 and Image.open(masks[0]).mode == "P"


@pytest.mark.parametrize(("method", "given", "used"), [
    ("cam", (), (0.30, 0.05)),  # IRN's, for the CAM's scale
    ("lpcam", (), (0.70, 0.45)),  # measured for LPCAM's maps
    ("lpcam", ("--bg-threshold", "0.2"), (0.70, 0.2)),  # what is given wins
])
def test_train_aff_takes_its_targets_from_the_cams_method(
        cam_run: Path, tmp_path: Path, method: str, given: tuple, used: tuple) -> None:
    run = copy_run(cam_run, tmp_path / "run", "train-cls", "cam")
    made = run / "cam" / "manifest.json"
    manifest = json.loads(made.read_text())
    manifest["config"]["method"] = method  # the same maps, said to be this method's
    made.write_text(json.dumps(manifest))
    ok(igcam("train-aff", "--run", run, *ARGS, *given))
    trained = json.loads((run / "train-aff" / "manifest.json").read_text())
    assert (trained["config"]["fg_threshold"], trained["config"]["bg_threshold"]) == used
    assert trained["inputs"]["target_thresholds_from"] == (
        "IRN's, for CAMs" if method == "cam" else "measured for lpcam's maps")


def test_train_aff_bad_inputs(cam_run: Path, tmp_path: Path) -> None:
    one_line_error(igcam("train-aff", "--run", tmp_path / "empty", "--device", "cpu"),
                   "no CAM files")
    # CAMs of another class list: an id the classifier does not know.
    cams = tmp_path / "cams"
    cams.mkdir()
    photo = next((cam_run / "cam").glob("*.npz"))
    write_cam(cams / "x.npz", np.array([99]), np.zeros((1, 8, 8), np.float16),
              np.zeros(20, np.float32), photo)
    one_line_error(igcam("train-aff", "--run", tmp_path / "fresh", "--cams", cams,
                         "--checkpoint", cam_run / "train-cls" / "classifier.pt",
                         "--device", "cpu"), "class ids [99]")
    assert not (tmp_path / "fresh" / "train-aff" / "affinity.pt").exists()
    # An affinity checkpoint whose weights are not those of the backbone it names.
    bad = tmp_path / "affinity.pt"
    write_torch(bad, {"format": "igcam-affinity/1", "backbone": "efficientnet-lite1",
                      "classifier_sha256": "", "model": {"head.weight": torch.zeros(1)}})
    one_line_error(igcam("refine", "--run", cam_run, "--method", "rw", "--rw-checkpoint", bad,
                         "--device", "cpu"), "does not fit its backbone")
    one_line_error(igcam("refine", "--run", cam_run, "--method", "rw", "--rw-checkpoint",
                         tmp_path / "missing.pt", "--device", "cpu"), "not found")


@pytest.mark.slow
def test_run_takes_crf_s_threshold_from_the_walked_maps(tiny_voc: Path, tmp_path: Path) -> None:
    """The chain rw+crf with ground truth: the walk first, its maps swept, DenseCRF on those
    maps at the sweep's best threshold."""
    run = tmp_path / "run"
    result = igcam("run", "--run", run, "--voc", tiny_voc, "--refine", "rw+crf", "--epochs", "1",
                   "--crop", "64",
                   "--batch-size", "8", "--scales", "1.0", "--device", "cpu", "--vis", "0")
    assert result.returncode == 0, result.stderr
    walk = json.loads((run / "eval" / "walk.json").read_text())["report"]
    assert walk["threshold"] == float(max(walk["sweep"], key=walk["sweep"].get))
    # run's default method is lpcam: its maps, walks and masks have folders of their own.
    walked = json.loads((run / "refine-lpcam-rw" / "manifest.json").read_text())["config"]
    assert Path(walked["cams"]) == run / "cam-lpcam"
    masks = json.loads((run / "refine-lpcam-rw+crf" / "manifest.json").read_text())["config"]
    assert masks["method"] == "crf" and masks["threshold"] == walk["threshold"]
    assert Path(masks["cams"]) == run / "refine-lpcam-rw" / "scores"
    aff = json.loads((run / "train-aff" / "manifest.json").read_text())["config"]
    assert Path(aff["cams"]) == run / "cam-lpcam"
    assert (aff["fg_threshold"], aff["bg_threshold"]) == (0.70, 0.45)  # LPCAM's targets
    assert (run / "train-aff" / "affinity.pt").is_file()
    mask = json.loads((run / "eval" / "mask.json").read_text())
    assert f"threshold {walk['threshold']}" in mask["config"]["name"]
