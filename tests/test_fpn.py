"""FPN neck: per-stage backbone maps, fused features that keep the CAM contract, level fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness import TRAIN, igcam

from igcam_cli.artifacts import read_cam, write_npz, write_torch
from igcam_cli.backbones import build_backbone
from igcam_cli.datasets import DatasetSpec, Sample, load_dataset
from igcam_cli.errors import IgcamError
from igcam_cli.methods.multiscale import LevelFusionOptions, base_cams, fuse_levels, level_weights
from igcam_cli.models import FPN_LEVELS, CamNet, load_classifier, save_checkpoint_payload
from igcam_cli.training.stage1 import prior_logits


@pytest.mark.parametrize(("name", "channels"), [
    ("efficientnet-lite0", (24, 40, 112, 1280)), ("resnet50", (256, 512, 1024, 2048))])
def test_stages_run_at_strides_4_8_16_16(name: str, channels: tuple[int, ...]) -> None:
    backbone = build_backbone(name, pretrained=False).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone.stages(x)
        final = backbone(x)
    assert backbone.stage_channels == channels
    assert [m.shape[1:] for m in maps] == [(c, 64 // s, 96 // s)
                                           for c, s in zip(channels, (4, 8, 16, 16), strict=True)]
    torch.testing.assert_close(maps[-1], final)  # the last stage is what a plain CamNet reads


def _fpn_model(channels: int = 32, classes: int = 3) -> CamNet:
    torch.manual_seed(0)
    return CamNet(build_backbone("efficientnet-lite0", pretrained=False), classes, channels).eval()


def test_fpn_features_feed_the_classifier_and_their_cam_is_the_mean_of_level_cams() -> None:
    model = _fpn_model()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        levels = model.level_features(x)
        features = model.features(x)
        fused_logits, level_logits = model.pyramid_logits(x)
        cam = model.cam(model.features(x))
        logits = model(x)
    assert [level.shape[1:] for level in levels] == [(32, 16, 24), (32, 8, 12), (32, 4, 6),
                                                     (32, 4, 6)]
    assert features.shape == (2, 32, 4, 6) and logits.shape == (2, 3)
    torch.testing.assert_close(fused_logits, logits)
    assert len(level_logits) == len(FPN_LEVELS)
    weight = model.classifier.weight
    level_cams = [F.adaptive_avg_pool2d(F.conv2d(level, weight), (4, 6)) for level in levels]
    torch.testing.assert_close(cam, F.relu(torch.stack(level_cams).mean(0)))
    # not a coincidence of one level: the finest level's CAM alone is something else
    assert not torch.allclose(cam, F.relu(level_cams[0]), atol=1e-3)


def test_fpn_head_has_a_bias_that_starts_at_the_label_prior() -> None:
    samples = [Sample(id=str(i), image=Path(f"{i}.jpg"), labels=labels)
               for i, labels in enumerate([(0,), (0, 1), (0,), ()])]
    # class 0 in 3 of 4 images, class 1 in 1, class 2 in none: (count + 0.5) / (4 + 1)
    expected = torch.logit(torch.tensor([0.7, 0.3, 0.1]))
    torch.testing.assert_close(prior_logits(samples, 3), expected)
    assert _fpn_model().classifier.bias is not None
    assert CamNet(build_backbone("efficientnet-lite0", pretrained=False), 3).classifier.bias \
        is None  # the plain CAM head stays bias-free unless asked (--head-bias)


def test_checkpoint_restores_the_fpn_the_head_bias_and_old_checkpoints(tmp_path: Path) -> None:
    model = _fpn_model(channels=16)
    path = write_torch(tmp_path / "fpn.pt", save_checkpoint_payload(
        model, "efficientnet-lite0", ("a", "b", "c")))
    loaded, payload = load_classifier(path, torch.device("cpu"))
    assert payload["fpn_channels"] == 16 and loaded.neck is not None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    biased = CamNet(build_backbone("efficientnet-lite0", pretrained=False), 3,
                    head_bias=True).eval()
    torch.nn.init.normal_(biased.classifier.bias)
    loaded, _ = load_classifier(write_torch(tmp_path / "biased.pt", save_checkpoint_payload(
        biased, "efficientnet-lite0", ("a", "b", "c"))), torch.device("cpu"))
    assert loaded.neck is None and loaded.classifier.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), biased(x))

    plain = CamNet(build_backbone("efficientnet-lite0", pretrained=False), 3).eval()
    old = save_checkpoint_payload(plain, "efficientnet-lite0", ("a", "b", "c"))
    del old["fpn_channels"]  # as written before the neck existed
    loaded, _ = load_classifier(write_torch(tmp_path / "old.pt", old), torch.device("cpu"))
    assert loaded.neck is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), plain(x))


def _blob(column: int) -> torch.Tensor:
    """A 32 x 32 map with a Gaussian bump centred at (16, column)."""
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return torch.exp(-((ys - 16) ** 2 + (xs - column) ** 2) / 20)


@pytest.mark.parametrize("agreeing", [0, 1])
def test_attention_weights_the_level_that_agrees_with_the_influence_map(agreeing: int) -> None:
    # Level 0 fires on the left, level 1 on the right, at 10x the strength: the mean fusion is
    # dominated by neither (levels are normalised), the attention by the agreeing one.
    level_cams = torch.stack([_blob(8), 10 * _blob(24)])[:, None]  # (L=2, K=1, 32, 32)
    influence = _blob((8, 24)[agreeing])[None] + 0.05 * torch.rand(1, 32, 32)
    weights = level_weights(level_cams, influence, temperature=0.1)
    assert weights.shape == (2, 1)
    assert weights[agreeing, 0] > 0.95
    torch.testing.assert_close(weights.sum(0), torch.ones(1))
    fused = fuse_levels(level_cams, weights)[0]
    assert fused[16, (8, 24)[agreeing]] > 0.9 > 0.1 > fused[16, (24, 8)[agreeing]]
    mean = fuse_levels(level_cams, torch.full((2, 1), 0.5))[0]
    torch.testing.assert_close(mean[16, 8], mean[16, 24])


def test_level_options_are_checked(tmp_path: Path) -> None:
    plain = CamNet(build_backbone("efficientnet-lite0", pretrained=False), 3)
    with pytest.raises(IgcamError, match="train-cls --fpn"):
        base_cams(plain, (1.0,), True, LevelFusionOptions(levels=("s4",)), None)
    model = _fpn_model()
    with pytest.raises(IgcamError, match="--fpn-levels"):
        base_cams(model, (1.0,), True, LevelFusionOptions(levels=("s2",)), None)
    with pytest.raises(IgcamError, match="needs --influence"):
        base_cams(model, (1.0,), True, LevelFusionOptions(attention="influence"), None)


@pytest.mark.slow
def test_cli_trains_an_fpn_classifier_and_fuses_its_levels(tiny_voc: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = igcam("train-cls", "--run", run, "--voc", tiny_voc, *TRAIN, "--fpn",
                   "--fpn-channels", "32")
    assert result.returncode == 0, result.stderr
    checkpoint = run / "train-cls" / "classifier.pt"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert payload["fpn_channels"] == 32
    assert any(key.startswith("neck.") for key in payload["model"])
    assert "classifier.bias" in payload["model"]  # on by default with --fpn

    # A third of the images (--shard) and one scale keep the two CAM passes quick.
    samples = load_dataset(DatasetSpec(voc=tiny_voc)).samples[::3]
    common = ("--run", run, "--voc", tiny_voc, "--device", "cpu", "--scales", "1.0",
              "--shard", "0/3")
    result = igcam("cam", *common)
    assert result.returncode == 0, result.stderr
    assert len(list((run / "cam").glob("*.npz"))) == len(samples)
    for sample in samples:
        data = read_cam(run / "cam" / f"{sample.id}.npz")
        assert data["classes"].tolist() == sorted(sample.labels)
        assert data["cams"].shape == (len(sample.labels), 64, 64)
        assert np.allclose(data["cams"].reshape(len(sample.labels), -1).max(1), 1, atol=1e-3)

    # Influence maps that mark each image's left half: the attention must follow them.
    influence = tmp_path / "influence"
    (influence / "maps").mkdir(parents=True)
    left = np.zeros((64, 64), np.float16)
    left[:, :32] = 1
    for sample in samples:
        write_npz(influence / "maps" / f"{sample.id}.npz",
                  classes=np.array(sorted(sample.labels), dtype=np.int16),
                  maps=np.stack([left] * len(sample.labels)))
    out = tmp_path / "attention"
    result = igcam("cam", *common, "--fpn-attention", "influence", "--influence", influence,
                   "--out", out)
    assert result.returncode == 0, result.stderr
    changed = 0
    for sample in samples:
        weighted = read_cam(out / f"{sample.id}.npz")["cams"].astype(np.float32)
        plain = read_cam(run / "cam" / f"{sample.id}.npz")["cams"].astype(np.float32)
        assert weighted.shape == plain.shape
        changed += not np.allclose(weighted, plain, atol=1e-2)
    assert changed > len(samples) // 2
