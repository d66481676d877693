"""Class-conditional inference: hiding and crops reveal the parts a CAM leaves under threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from harness import igcam

from igcam_cli.artifacts import read_cam
from igcam_cli.methods.ccam import CcamOptions, class_conditional
from igcam_cli.methods.multiscale import multiscale_cam
from igcam_cli.models import CamNet
from igcam_cli.transforms import normalise


class _RednessNet(torch.nn.Module):
    """Stands in for a CamNet whose one class is 'red': its CAM is relu(red - green), pixelwise.

    Stride-1 features keep the maps exact; ``passes`` counts the forward passes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Conv2d(3, 1, 1, bias=False)
        self.classifier.weight.data = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1)
        self.passes = 0

    # The CAM and logits exactly as a trained classifier computes them.
    cam = CamNet.cam
    logits = CamNet.logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return images


def _image(parts: list[tuple[slice, float]], width: int = 96) -> torch.Tensor:
    """A grey 48-px-high image with red bars (columns, redness) in rows 16-32."""
    image = torch.full((3, 48, width), 0.3)
    for columns, redness in parts:
        image[:, 16:32, columns] = torch.tensor([redness, 0.0, 0.0]).view(3, 1, 1)
    return image


def _ccam(model: _RednessNet, image: torch.Tensor, **options: object) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """(plain normalised CAM, ccam map) of class 0, counting only ccam's passes."""
    cams = normalise(multiscale_cam(model, image, (1.0,), False)[0])
    model.passes = 0
    return cams[0], class_conditional(model, image, cams, [0], (1.0,), False,
                                      CcamOptions(**options))[0]


def test_hiding_reveals_the_weaker_part_and_stops_when_nothing_is_left() -> None:
    model = _RednessNet()
    head, body = slice(8, 24), slice(56, 80)
    cam, ccam = _ccam(model, _image([(head, 1.0), (body, 0.5)]), crops=False)
    assert cam[16:32, body].max() <= 0.5  # the plain CAM: the body stays under 0.7
    assert ccam[16:32, body].min() > 0.99  # hiding the head made the body the new peak
    assert ccam[16:32, head].min() > 0.99
    assert ccam[:16].max() == 0 and ccam[32:].max() == 0  # background stays off
    # pass 1 hides the head and finds the body, pass 2 hides both and finds nothing: stop
    assert model.passes == 2


def test_rounds_and_min_gain_bound_the_passes() -> None:
    model = _RednessNet()
    chain = [(slice(4 + 20 * i, 20 + 20 * i), 0.6 ** i) for i in range(4)]  # 1, .6, .36, .22
    image = _image(chain, width=96)
    _, ccam = _ccam(model, image, crops=False, rounds=2)
    assert model.passes == 2  # the cap, although parts are left
    assert ccam[16:32, chain[2][0]].min() > 0.99  # two passes revealed parts 2 and 3
    assert ccam[16:32, chain[3][0]].max() < 0.7  # part 4 is still under the fill threshold
    _, ccam = _ccam(model, image, crops=False, rounds=5, min_gain=0.1)
    assert model.passes == 1  # one part is 256 / 4608 = 5.6 % of the image, under the bar
    _, ccam = _ccam(model, image, crops=False, rounds=5)
    assert model.passes == 4 and ccam[16:32, chain[3][0]].min() > 0.99  # all four, then stop


def test_a_pass_the_classifier_no_longer_believes_is_dropped() -> None:
    model = _RednessNet()
    head, body = slice(8, 24), slice(56, 80)
    image = _image([(head, 1.0), (body, 0.5)])
    hidden = image.clone()
    hidden[:, 16:32, head] = image.mean(dim=(1, 2)).view(3, 1, 1)
    score = float(multiscale_cam(model, hidden, (1.0,), False)[1][0])  # about 0.51
    cam, ccam = _ccam(model, image, crops=False, min_score=score + 0.01)
    assert model.passes == 1  # one re-run, whose probability is under the bar: stop
    torch.testing.assert_close(ccam, cam)  # and nothing of it is merged
    _, ccam = _ccam(model, image, crops=False, min_score=score - 0.01)
    assert ccam[16:32, body].min() > 0.99


def test_crops_make_the_weaker_object_the_peak_of_its_own_crop() -> None:
    model = _RednessNet()
    left, right = slice(8, 24), slice(72, 88)  # centre of mass near x = 37: split there
    cam, ccam = _ccam(model, _image([(left, 1.0), (right, 0.5)]), rounds=0)
    assert cam[16:32, right].max() <= 0.5
    assert ccam[18:30, 74:86].min() > 0.95  # the right crops do not hold the left object
    assert ccam[18:30, 10:22].min() > 0.95  # pasted back where it belongs
    assert ccam[:12].max() < 0.05 and ccam[36:].max() < 0.05 and ccam[:, 36:60].max() < 0.05
    assert model.passes == 4  # one multi-scale CAM per crop
    _, unchanged = _ccam(model, _image([(left, 1.0), (right, 0.5)]), rounds=0, crops=False)
    torch.testing.assert_close(unchanged, cam)


def test_ccam_method_through_the_cli(own_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    common = ("--run", own_run, "--voc", tiny_voc, "--scales", "1.0", "--no-flip",
              "--store-stride", "1",  # the maps as computed, to compare ccam with its base
              "--shard", "0/6", "--device", "cpu")  # 4 of the 24 images: ccam is costly
    plain = igcam("cam", *common, "--out", tmp_path / "cam")
    assert plain.returncode == 0, plain.stderr
    result = igcam("cam", *common, "--method", "ccam", "--ccam-rounds", "3")
    assert result.returncode == 0, result.stderr
    files = sorted((own_run / "cam-ccam").glob("*.npz"))
    assert len(files) == 4
    peaks = []
    for path in files:
        ccam, cam = read_cam(path), read_cam(tmp_path / "cam" / path.name)
        assert ccam["cams"].shape == cam["cams"].shape and ccam["cams"].shape[1:] == (64, 64)
        # ccam only adds evidence to the CAM it starts from (float16 rounding aside)
        assert np.all(ccam["cams"].astype(np.float32) >= cam["cams"].astype(np.float32) - 1e-2)
        peaks.append(ccam["cams"].reshape(len(ccam["cams"]), -1).max(axis=1).astype(np.float32))
    peaks = np.concatenate(peaks)
    assert np.all(np.isclose(peaks, 1, atol=1e-2) | (peaks == 0)) and (peaks > 0).any()


def test_ccam_rejects_a_bad_threshold(trained_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    result = igcam("cam", "--run", trained_run, "--voc", tiny_voc, "--method", "ccam",
                   "--ccam-fill-threshold", "1.5", "--out", tmp_path, "--device", "cpu")
    assert result.returncode == 2
    assert "--ccam-fill-threshold" in result.stderr.strip().splitlines()[-1]
