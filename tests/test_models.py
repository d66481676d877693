from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from igcam_cli.artifacts import write_torch
from igcam_cli.backbones import BACKBONES, build_backbone, default_lr
from igcam_cli.backbones.base import BackboneSpec
from igcam_cli.backbones.weights import weights_dir, weights_manifest
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_image
from igcam_cli.models import CamNet, load_classifier, save_checkpoint_payload
from igcam_cli.transforms import resize, to_tensor


def test_efficientnet_lite0_imagenet_weights_really_load(coco128: Path) -> None:
    """A COCO photo of a kitten must land in ImageNet's cat classes 281-285 (top-2)."""
    backbone = build_backbone("efficientnet-lite0", output_stride=32).eval()
    image = to_tensor(read_image(coco128 / "JPEGImages" / "000000000575.jpg"))[None]
    image = resize(image, (224, 224))
    with torch.no_grad():
        features = backbone((image - 0.5) / 0.5)
        logits = backbone.imagenet_fc(features.mean(dim=(2, 3)))
    top = logits.topk(2).indices[0].tolist()
    assert any(281 <= k <= 285 for k in top), top


def test_untrained_lite0_is_not_a_cat_detector(coco128: Path) -> None:
    """The check above can fail: random weights do not put the kitten in the cat classes."""
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet-lite0", pretrained=False, output_stride=32).eval()
    image = resize(to_tensor(read_image(coco128 / "JPEGImages" / "000000000575.jpg"))[None],
                   (224, 224))
    with torch.no_grad():
        logits = backbone.imagenet_fc(backbone((image - 0.5) / 0.5).mean(dim=(2, 3)))
    assert not any(281 <= k <= 285 for k in logits.topk(2).indices[0].tolist())


@pytest.mark.parametrize("name", ["efficientnet-lite0", "resnet50"])
def test_output_stride_16_and_frozen_batchnorm(name: str) -> None:
    backbone = build_backbone(name, pretrained=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    model = CamNet(backbone, 5)
    x = torch.rand(2, 3, 96, 128)
    assert model.cam(model.features(x)).shape == (2, 5, 6, 8)
    assert model(x).shape == (2, 5)


def test_frozen_batchnorm_statistics_do_not_move_in_training() -> None:
    model = CamNet(build_backbone("efficientnet-lite0"), 3).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    optimizer = torch.optim.SGD(model.param_groups(0.01, 10, 0), momentum=0.9)
    loss = model(torch.rand(2, 3, 64, 64)).sum()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    stem = model.backbone.net._conv_stem.weight
    assert not stem.requires_grad  # the stem stays fixed, as in IRN


def test_checkpoint_roundtrip_is_weights_only(tmp_path: Path) -> None:
    model = CamNet(build_backbone("efficientnet-lite0", pretrained=False), 4).eval()
    path = write_torch(tmp_path / "c.pt", save_checkpoint_payload(
        model, "efficientnet-lite0", ("a", "b", "c", "d"), history=[{"loss": 1.0}]))
    loaded, payload = load_classifier(path, torch.device("cpu"))
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model(x))
    assert payload["class_names"] == ["a", "b", "c", "d"]


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "igcam-classifier/1", "payload": np.dtype}, path)
    with pytest.raises(IgcamError, match="cannot be loaded"):
        load_classifier(path, torch.device("cpu"))


def test_resnet_weights_file_is_checked_and_loaded(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.resnet50().state_dict()
    fake = tmp_path / "resnet50-0676ba61.pth"  # the manifest's file name, but not its hash
    torch.save(state, fake)
    with pytest.raises(IgcamError, match="SHA-256 does not match"):
        build_backbone("resnet50", weights=fake)
    mine = tmp_path / "my-resnet50.pth"  # an unlisted name: loaded as given
    torch.save(state, mine)
    backbone = build_backbone("resnet50", weights=mine)
    assert torch.equal(backbone.body[0].weight, state["conv1.weight"])
    with pytest.raises(IgcamError, match="unknown backbone"):
        build_backbone("unknown-net")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_registered_backbone_keeps_the_contract(name: str) -> None:
    """What CamNet, the FPN neck and ``influence --params layer4`` rely on, for every family."""
    backbone = build_backbone(name, pretrained=False).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        final = backbone(x)
        maps = backbone.stages(x)
    assert final.shape == (1, backbone.out_channels, 4, 6)  # output stride 16
    assert [m.shape for m in maps] == [(1, c, 64 // s, 96 // s) for c, s in
                                       zip(backbone.stage_channels, (4, 8, 16, 16), strict=True)]
    assert backbone.stage_channels[-1] == backbone.out_channels
    torch.testing.assert_close(maps[-1], final)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert len(backbone.mean) == 3 and len(backbone.std) == 3
    everything = {id(p) for p in backbone.parameters()}
    last = [id(p) for p in backbone.last_stage_parameters()]
    assert last and set(last) <= everything
    assert {id(p) for p in backbone.frozen_parameters()} <= everything
    assert default_lr(name) > 0


def test_backbone_names_are_listed_in_registration_order_and_unique() -> None:
    assert list(BACKBONES) == ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                               "resnet50", "resnet101"]
    with pytest.raises(IgcamError, match="backbone 'resnet50' is registered twice"):
        BACKBONES.register(BackboneSpec(BACKBONES["resnet50"].build, "again", 0.1), "resnet50")
    with pytest.raises(IgcamError, match="choose from efficientnet-lite0, .*, resnet101"):
        default_lr("unknown-net")


def test_weights_manifest_ships_with_the_package_and_the_folder_can_be_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"efficientnet-lite0", "resnet50", "resnet101"} <= set(weights_manifest())
    monkeypatch.setenv("IGCAM_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path
