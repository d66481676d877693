"""The gradient CAM family on a hand-built network whose feature map and gradients are known.

The stand-in backbone's features are the image's colour channels averaged over 16 x 16 cells
(plus a constant channel), and the classifier's weights are set by hand, so the gradient of
class c's logit at every position is ``W[c] / (h * w)``: each method's map follows from its
formula in a few lines of numpy, and the method must give it through the whole multi-scale
path (one scale, no flip here).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from igcam_cli.backbones.base import Backbone
from igcam_cli.datasets import DatasetSpec, load_dataset
from igcam_cli.demo_data import make_demo_dataset
from igcam_cli.methods import METHODS, Chain, MethodContext
from igcam_cli.methods.eigencam import first_direction
from igcam_cli.models import CamNet
from igcam_cli.transforms import normalise, resize

# Rows: classes; columns: the red, green, blue and constant channels.
WEIGHTS = np.array([[2.0, -1.0, 0.0, 0.5],
                    [-0.5, 0.0, 3.0, -1.0]], dtype=np.float32)


class ColourCells(Backbone):
    """Features: each 16 x 16 cell's mean red, green and blue, and a constant 1."""

    out_channels = 4
    stage_channels = (4, 4, 4, 4)
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(x, 16)
        return torch.cat([cells, torch.ones_like(cells[:, :1])], dim=1)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self(x)] * 4

    def last_stage_parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(())


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> MethodContext:
    root = tmp_path_factory.mktemp("gradient")
    dataset = load_dataset(DatasetSpec(voc=make_demo_dataset(root / "data", n_train=2,
                                                             size=64, seed=1)))
    model = CamNet(ColourCells(), 2).eval()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(WEIGHTS)[..., None, None])
    return MethodContext(model, torch.device("cpu"), (1.0,), False, dataset, root / "run",
                         root / "classifier.pt", None, False)


def _image() -> torch.Tensor:
    """A 64 x 64 image of 4 x 4 cells of different colours."""
    cells = torch.from_numpy(np.random.default_rng(0).random((3, 4, 4), dtype=np.float32))
    return cells.repeat_interleave(16, 1).repeat_interleave(16, 2)


def _expected(grid: np.ndarray) -> torch.Tensor:
    """(K, 4, 4) maps before ReLU -> what a method returns for the 64 x 64 image."""
    maps = torch.from_numpy(np.maximum(grid, 0).astype(np.float32))
    return normalise(resize(maps[None], (64, 64))[0])


def _features() -> np.ndarray:
    image = _image().numpy()
    cells = image.reshape(3, 4, 16, 4, 16).mean(axis=(2, 4))
    return np.concatenate([cells, np.ones((1, 4, 4), np.float32)])  # (D, 4, 4)


def _linear(weights: np.ndarray) -> np.ndarray:
    return np.einsum("kd,dhw->khw", weights, _features())


def _gradcampp() -> np.ndarray:
    grads = WEIGHTS / 16  # (K, D), the same at every position
    totals = _features().sum(axis=(1, 2))  # (D,)
    alpha = grads**2 / (2 * grads**2 + totals * grads**3 + 1e-6)
    alpha[grads == 0] = 0
    return _linear(16 * np.maximum(grads, 0) * alpha)


def _eigencam() -> np.ndarray:
    vectors = _features().reshape(4, 16).T
    centred = vectors - vectors.mean(axis=0)
    projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    energy = vectors.sum(axis=1)
    if (projection * (energy - energy.mean())).sum() < 0:
        projection = -projection
    return np.repeat(projection.reshape(1, 4, 4), 2, axis=0)


def _scorecam() -> np.ndarray:
    """Each channel's map, enlarged and scaled to [0, 1], masks the image (the backbone's mean
    is 0, so masked out is black); softmax over channels of each class's logit weighs them."""
    image, features = _image().numpy(), _features()
    masks = resize(torch.from_numpy(features)[None], (64, 64))[0].numpy()
    low = masks.min(axis=(1, 2), keepdims=True)
    masks = (masks - low) / np.maximum(masks.max(axis=(1, 2), keepdims=True) - low, 1e-7)
    logits = []
    for mask in masks:
        cells = (image * mask).reshape(3, 4, 16, 4, 16).mean(axis=(2, 4)).mean(axis=(1, 2))
        logits.append(WEIGHTS @ np.append(cells, 1.0))
    scores = np.exp(np.array(logits) - np.max(logits, axis=0))
    weights = scores / scores.sum(axis=0)  # (channels, K)
    return np.einsum("nk,nhw->khw", weights, features)


EXPECTED = {
    # the mean gradient is W / (h w): the plain CAM, up to the scale normalising removes
    "gradcam": lambda: _linear(WEIGHTS),
    "hirescam": lambda: _linear(WEIGHTS),
    "xgradcam": lambda: _linear(WEIGHTS),
    "layercam": lambda: _linear(np.maximum(WEIGHTS, 0)),  # negative gradients dropped
    "gradcampp": _gradcampp,
    "eigencam": _eigencam,
    "scorecam": _scorecam,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_maps_follow_the_formula(context: MethodContext, name: str) -> None:
    image = _image()
    incoming = torch.rand(2, 64, 64)
    options = {"scorecam": METHODS["scorecam"].Options(channels=4, batch=3)}  # every channel
    maps = Chain([name], context, options)(context.dataset.samples[0], image, incoming, [0, 1])
    torch.testing.assert_close(maps, _expected(EXPECTED[name]()), rtol=1e-4, atol=1e-5)


def test_gradcampp_differs_from_the_cam_where_channels_carry_unequal_evidence() -> None:
    """Not a restatement of the CAM: with these weights Grad-CAM++ keeps class 0's red and
    constant channels in another proportion."""
    assert not np.allclose(_expected(_gradcampp()), _expected(_linear(WEIGHTS)), atol=1e-3)


def test_every_gradient_method_is_registered() -> None:
    assert set(EXPECTED) <= set(METHODS)


def test_eigencam_s_power_iteration_finds_the_svd_s_first_direction() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 2, 64, generator=generator)
    strength = torch.randn(3, 200, 2, generator=generator) * torch.tensor([3.0, 1.0])
    centred = strength @ basis + 0.1 * torch.randn(3, 200, 64, generator=generator)
    centred -= centred.mean(dim=1, keepdim=True)
    reference = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]
    cosine = (first_direction(centred) * reference).sum(dim=1).abs()
    assert torch.allclose(cosine, torch.ones(3), atol=1e-5)
