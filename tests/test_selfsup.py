"""Self-supervised stage: the MAM and RCM losses, the frozen SupportNet, the CLI stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from harness import TRAIN, igcam

from igcam_cli.artifacts import read_cam, sha256_file
from igcam_cli.backbones import build_backbone
from igcam_cli.models import CamNet
from igcam_cli.training.losses import frozen_copy, mam_loss, rcm_loss
from igcam_cli.training.selfsup import SelfSupOptions, selfsup_loss
from igcam_cli.transforms import normalise


def _blob() -> torch.Tensor:
    """A (1, 2, 8, 8) target: class 0 fills the top-left quarter, class 1 is not labelled."""
    guide = torch.zeros(1, 2, 8, 8)
    guide[0, 0, :4, :4] = 1.0
    return guide


def test_mam_is_zero_on_the_target_and_positive_off_it() -> None:
    target = torch.tensor([[1.0, 0.0]])
    guide = _blob()
    guide[0, 0, 4, :4] = 0.5  # a half-sure row: no attention, so it costs nothing either way
    assert mam_loss(3 * guide, guide, target) < 1e-6  # scale-free: maps are max-normalised
    other = 3 * guide
    other[0, 1] = torch.rand(8, 8)  # an unlabelled class does not count
    other[0, 0, 4, :4] = 1.0
    assert mam_loss(other, guide, target) < 1e-6
    shifted = torch.roll(guide, shifts=2, dims=3)
    assert mam_loss(shifted, guide, target) > 0.2


def test_mam_gradient_moves_the_cam_to_the_target() -> None:
    target = torch.tensor([[1.0, 0.0]])
    guide = _blob()
    cams = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    before = mam_loss(cams, guide, target).item()
    optimizer = torch.optim.SGD([cams], lr=5.0)
    for _ in range(50):
        optimizer.zero_grad()
        mam_loss(cams, guide, target).backward()
        optimizer.step()
        cams.data.clamp_(min=0)  # CAMs are ReLU'd
    after = (normalise(cams.detach()) - guide)[0, 0].abs().mean().item()
    assert before > 0.3 and after < 0.05


def test_rcm_is_lower_when_region_features_agree_with_their_prototype() -> None:
    guide = _blob()
    guide[0, 1, :4, 4:] = 1.0  # a second class on the top right; the bottom half is background
    features = torch.zeros(1, 4, 8, 8)
    features[0, 0, :4, :4] = 1.0
    features[0, 1, :4, 4:] = 1.0
    features[0, 2, 4:] = 1.0
    features += 0.05 * torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    shuffled = features.flatten(2)[..., torch.randperm(64)].view_as(features)
    defaults = SelfSupOptions()
    options = {"threshold": defaults.rcm_threshold, "bg_threshold": defaults.rcm_bg_threshold,
               "temperature": defaults.rcm_temperature, "pixels": 8}
    agree, mixed = rcm_loss(features, guide, **options), rcm_loss(shuffled, guide, **options)
    assert agree < 0.05 and mixed > 0.5  # log(3) ~ 1.1 when the prototypes carry no signal
    one_region = torch.ones(1, 1, 8, 8)  # nothing to contrast with: no loss, no NaN
    assert rcm_loss(features, one_region, **options) == 0


def test_support_net_stays_frozen_while_the_main_net_learns() -> None:
    torch.manual_seed(0)
    model = CamNet(build_backbone("efficientnet-lite0", pretrained=False), num_classes=2)
    support = frozen_copy(model)
    before = {k: v.clone() for k, v in support.state_dict().items()}
    optimizer = torch.optim.SGD(model.param_groups(0.1, 10.0, 0.0), lr=0.1)
    batch, target = torch.rand(2, 3, 32, 32), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    features = model.features(batch)
    cams = model.cam(features)
    loss = selfsup_loss(support, batch, features, cams, target, SelfSupOptions(rcm_weight=1.0))
    loss.backward()
    optimizer.step()
    assert loss > 0 and not any(p.requires_grad for p in support.parameters())
    assert all(torch.equal(before[k], v) for k, v in support.state_dict().items())
    learnt = model.backbone.state_dict()
    assert any(not torch.equal(learnt[k], v) for k, v in support.backbone.state_dict().items())


@pytest.mark.slow
def test_selfsup_stage_writes_a_classifier_cam_can_use(own_run: Path, tiny_voc: Path,
                                                        tmp_path: Path) -> None:
    stage1 = own_run / "train-cls" / "classifier.pt"
    before = sha256_file(stage1)
    assert TRAIN[:2] == ("--epochs", "2")
    result = igcam("train-cls", "--run", own_run, "--voc", tiny_voc, *TRAIN[2:],
                   "--epochs", "1", "--stage", "self-sup", "--mam-scales", "0.5,1.0")
    assert result.returncode == 0, result.stderr
    folder = own_run / "train-cls-selfsup"
    checkpoint = folder / "classifier.pt"
    assert checkpoint.is_file() and sha256_file(stage1) == before
    assert (folder / "epoch-001.pt").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["stage"] == "self-sup"
    assert manifest["config"]["stage_options"]["self-sup"]["mam_scales"] == [0.5, 1.0]
    trained = torch.load(checkpoint, weights_only=True)["model"]
    start = torch.load(stage1, weights_only=True)["model"]
    assert not torch.equal(trained["classifier.weight"], start["classifier.weight"])
    out = tmp_path / "cam-selfsup"
    result = igcam("cam", "--run", own_run, "--voc", tiny_voc, "--checkpoint", checkpoint,
                   "--out", out, "--scales", "1.0", "--no-flip", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.npz"))
    assert len(files) == 24 and read_cam(files[0])["cams"].shape[1:] == (64, 64)


def test_unknown_stage_is_a_one_line_error(tmp_path: Path, tiny_voc: Path) -> None:
    result = igcam("train-cls", "--run", tmp_path, "--voc", tiny_voc, "--stage", "3")
    assert result.returncode == 2
    assert "self-sup" in result.stderr.strip().splitlines()[-1]
