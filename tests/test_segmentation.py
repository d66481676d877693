"""train-seg and predict: a segmentation network on pseudo-masks, and label maps of photos.

The pseudo-masks here are the tiny generated dataset's own masks (copied to a folder of the
run, as `refine` would have written them); every training is a couple of epochs of 48-px
crops on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness import copy_run, igcam, ok, one_line_error
from PIL import Image

from igcam_cli.artifacts import RunDir
from igcam_cli.backbones import build_backbone
from igcam_cli.datasets import load_dataset
from igcam_cli.datasets.base import DatasetSpec
from igcam_cli.images import IGNORE, read_label_map, save_label_map
from igcam_cli.segmentation import SegNet, label_probabilities, segmentation_loss

SEG = ("--epochs", "2", "--crop", "48", "--batch-size", "4", "--loader-workers", "0",
       "--device", "cpu")


def _masks(tiny_voc: Path, folder: Path) -> Path:
    """The dataset's masks as a pseudo-mask folder of our own (free to damage)."""
    shutil.copytree(tiny_voc / "SegmentationClass", folder)
    return folder


@pytest.fixture(scope="module")
def seg_run(trained_run: Path, tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Path:
    """A run with the session's classifier and a segmenter trained for two epochs."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("seg") / "run", "train-cls")
    masks = _masks(tiny_voc, run / "masks")
    ok(igcam("train-seg", "--run", run, "--voc", tiny_voc, "--masks", masks, *SEG))
    return run


def test_train_seg_writes_the_training_contract(seg_run: Path) -> None:
    folder = seg_run / "train-seg"
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch-001.pt", "epoch-002.pt", "manifest.json", "metrics.json", "segmenter.pt"]
    history = json.loads((folder / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0 < h["pixel_accuracy"] <= 1 and 0 < h["miou"] <= 1
               for h in history)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["images"] == 24
    # started from the run's classifier (same backbone), whose hash is in the recipe
    assert manifest["backbone_from"].endswith("classifier.pt")
    assert manifest["recipe"]["init_sha256"] == manifest["inputs"]["init_sha256"]
    payload = torch.load(folder / "segmenter.pt", weights_only=True)
    classifier = torch.load(seg_run / "train-cls" / "classifier.pt", weights_only=True)
    # the stem is frozen in training (as in train-cls): it is still the classifier's
    stem = [k for k in classifier["model"] if k.startswith("backbone.") and "stem" in k]
    assert stem and all(torch.equal(classifier["model"][k], payload["model"][k]) for k in stem)


def test_predict_then_eval_end_to_end(seg_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    run = copy_run(seg_run, tmp_path / "run", "train-seg")
    ok(igcam("predict", "--run", run, "--voc", tiny_voc, "--device", "cpu", "--scales",
             "1.0,1.5", "--flip"))
    pngs = sorted((run / "predict").glob("*.png"))
    assert len(pngs) == 24 and Image.open(pngs[0]).mode == "P"
    assert read_label_map(pngs[0]).shape == read_label_map(
        tiny_voc / "SegmentationClass" / pngs[0].name).shape
    again = ok(igcam("predict", "--run", run, "--voc", tiny_voc, "--device", "cpu",
                     "--scales", "1.0,1.5", "--flip"))
    assert "0 label maps written, 24 already done" in again.stderr  # resumable
    report = json.loads(ok(igcam("eval", "--pred", run / "predict", "--voc", tiny_voc,
                                 "--out", "-")).stdout)
    assert 0 < report["report"]["miou"] <= 1
    # The report shows the network's training curve and its label maps among the masks.
    ok(igcam("eval", "--pred", run / "predict", "--voc", tiny_voc, "--out",
             run / "eval" / "predict.json"))
    ok(igcam("report", "--run", run))
    page = RunDir(run).report().read_text()
    assert "training-train-seg.svg" in page
    assert "mIoU (%)" in (run / "report" / "training-train-seg.svg").read_text()
    assert "<td>predict</td><td>pseudo-masks</td>" in page
    assert f"{100 * report['report']['miou']:.1f}" in page
    # bare photos: no labels, no class list (the checkpoint's 5 classes, not VOC's 20)
    ok(igcam("predict", "--run", run, "--images", tiny_voc / "JPEGImages", "--out",
             tmp_path / "photos", "--device", "cpu"))
    assert len(list((tmp_path / "photos").glob("*.png"))) == 24


def test_resume_after_epoch_one_ends_with_the_same_weights(seg_run: Path, tiny_voc: Path,
                                                          tmp_path: Path) -> None:
    # Interrupted during epoch 2: the run directory as it was after epoch 1.
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    for name in ("segmenter.pt", "manifest.json", "epoch-002.pt"):
        (run / "train-seg" / name).unlink()
    result = ok(igcam("train-seg", "--run", run, "--voc", tiny_voc, "--masks", run / "masks",
                      *SEG, "--resume"))
    assert "resuming after epoch 1" in result.stderr
    whole = torch.load(seg_run / "train-seg" / "segmenter.pt", weights_only=True)
    resumed = torch.load(run / "train-seg" / "segmenter.pt", weights_only=True)
    assert whole["model"].keys() == resumed["model"].keys()
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [h["loss"] for h in whole["history"]] == [h["loss"] for h in resumed["history"]]


def test_loss_counts_only_pixels_not_marked_255() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.full((1, 8, 8), IGNORE, dtype=torch.long)
    target[0, 2:4, 5:7] = torch.tensor([[1, 2], [0, 1]])
    loss = segmentation_loss(logits, target)
    patch = F.cross_entropy(logits[0, :, 2:4, 5:7].reshape(3, -1).T,
                            target[0, 2:4, 5:7].reshape(-1))
    assert torch.allclose(loss, patch)
    loss.backward()
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:4, 5:7] = False
    assert logits.grad[0][:, outside].abs().max() == 0
    assert logits.grad[0][:, ~outside].abs().max() > 0
    # nothing labelled: zero, not NaN
    empty = segmentation_loss(logits, torch.full((1, 8, 8), IGNORE))
    assert empty.item() == 0


def test_balanced_loss_weighs_each_class_alike() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 2  # one pixel of class 2 against 15 of background
    target[0, 3, 3] = IGNORE
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")[0]
    background = pixel[(target[0] == 0)].mean()
    expected = (background + pixel[0, 0]) / 2
    assert torch.allclose(segmentation_loss(logits, target, balanced=True), expected)
    assert not torch.allclose(segmentation_loss(logits, target), expected)


def test_suppressed_classes_never_win_a_pixel() -> None:
    torch.manual_seed(0)
    model = SegNet(build_backbone("efficientnet-lite0", pretrained=False), 3).eval()
    with torch.no_grad():
        model.head[-1].bias[3] = 100.0  # class 3 (label 3) everywhere
    image = torch.rand(3, 40, 56)
    free = label_probabilities(model, image, (1.0,), flip=False)
    assert (free.argmax(0) == 3).all()
    kept = label_probabilities(model, image, (1.0, 0.5), flip=True, allowed=[0, 1])
    assert kept.shape == (4, 40, 56)
    assert torch.allclose(kept.sum(0), torch.ones(40, 56))
    assert kept[2:].max() == 0 and set(kept.argmax(0).unique().tolist()) <= {0, 1}


def test_predict_keeps_only_background_and_labelled_classes(seg_run: Path, tiny_voc: Path,
                                                            tmp_path: Path) -> None:
    """A segmenter edited to say 'star' everywhere: with the image labels only the images
    labelled star get it; without them every pixel of every image is star."""
    run = copy_run(seg_run, tmp_path / "run", "train-seg")
    path = run / "train-seg" / "segmenter.pt"
    payload = torch.load(path, weights_only=True)
    star = payload["class_names"].index("star") + 1
    payload["model"]["head.4.bias"][star] = 100.0
    torch.save(payload, path)
    ok(igcam("predict", "--run", run, "--voc", tiny_voc, "--device", "cpu"))
    samples = load_dataset(DatasetSpec(voc=tiny_voc)).samples
    with_star = 0
    for sample in samples:
        labels = read_label_map(run / "predict" / f"{sample.id}.png")
        allowed = {0, *(c + 1 for c in sample.labels)}
        assert set(np.unique(labels).tolist()) <= allowed, sample.id
        with_star += star in allowed
    assert 0 < with_star < len(samples)
    ok(igcam("predict", "--run", run, "--voc", tiny_voc, "--device", "cpu", "--no-use-labels",
             "--out", tmp_path / "free"))
    assert all((read_label_map(p) == star).all() for p in (tmp_path / "free").glob("*.png"))


def test_missing_masks_are_one_line_errors(trained_run: Path, tiny_voc: Path,
                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    one_line_error(igcam("train-seg", "--run", run, "--voc", tiny_voc, "--masks",
                         tmp_path / "nowhere", *SEG), "--masks", "is not a folder")
    # without --masks: run's default masks, which this run lacks
    one_line_error(igcam("train-seg", "--run", run, "--voc", tiny_voc, *SEG),
                   "refine-lpcam-crf", "pass --masks")
    assert not (run / "train-seg").exists()
    one_line_error(igcam("predict", "--run", run, "--voc", tiny_voc, "--device", "cpu"),
                   "segmenter.pt", "train-seg")


def test_mask_with_a_class_past_the_list_is_one_line_error(tiny_voc: Path,
                                                           tmp_path: Path) -> None:
    masks = _masks(tiny_voc, tmp_path / "masks")
    first = sorted(masks.glob("*.png"))[3]
    labels = read_label_map(first).copy()
    labels[:4, :4] = 9  # 5 classes: 1..5 (and 255)
    save_label_map(first, labels)
    one_line_error(igcam("train-seg", "--run", tmp_path / "run", "--voc", tiny_voc, "--masks",
                         masks, *SEG), first.name, "class id 9", "5 classes")


def test_mask_of_another_size_is_warned_and_skipped(tiny_voc: Path, tmp_path: Path) -> None:
    masks = _masks(tiny_voc, tmp_path / "masks")
    first = sorted(masks.glob("*.png"))[0]
    save_label_map(first, read_label_map(first)[:32, :40])
    (sorted(masks.glob("*.png"))[1]).unlink()
    run = tmp_path / "run"
    result = ok(igcam("train-seg", "--run", run, "--voc", tiny_voc, "--masks", masks,
                      *SEG[:1], "1", *SEG[2:]))
    assert "40x32" in result.stderr and "skipped" in result.stderr
    manifest = json.loads((run / "train-seg" / "manifest.json").read_text())
    assert manifest["counts"]["size_mismatch"] == 1 and manifest["counts"]["no_mask"] == 1
    assert manifest["counts"]["images"] == 22
    # no classifier in this run: ImageNet weights
    assert manifest["backbone_from"] == "imagenet"


@pytest.mark.slow
def test_run_self_trains_on_its_masks(tiny_voc: Path, tmp_path: Path) -> None:
    """``run --self-train 1``: a network trained on run's masks, its CRF-refined labels of the
    training photos as the round's masks, scored against the ground truth."""
    run = tmp_path / "run"
    ok(igcam("run", "--run", run, "--voc", tiny_voc, "--method", "cam", "--epochs", "1",
             "--crop", "64", "--scales", "1.0", "--device", "cpu", "--vis", "0",
             "--self-train", "1", "--seg-epochs", "1", "--seg-crop", "48"))
    trained = json.loads((run / "train-seg-round1" / "manifest.json").read_text())
    assert Path(trained["inputs"]["masks"]) == run / "refine"  # run's masks (cam, crf)
    assert trained["config"]["epochs"] == 1 and trained["config"]["crop"] == 48
    labelled = json.loads((run / "predict-round1" / "manifest.json").read_text())["config"]
    assert labelled["refine"] == "crf"
    assert Path(labelled["checkpoint"]) == run / "train-seg-round1" / "segmenter.pt"
    assert len(list((run / "predict-round1").glob("*.png"))) == 24
    scored = json.loads((run / "eval" / "self-train-1.json").read_text())
    assert Path(scored["config"]["pred"]) == run / "predict-round1"
    assert 0 < scored["report"]["miou"] <= 1
    assert not (run / "train-seg").exists()  # the rounds' folders are their own
