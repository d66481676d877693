"""The contract every registered CAM method keeps, and chains of them, on one small classifier.

A method receives one image's max-normalised maps of its classes and returns maps of the same
classes: same shape, float, nothing above 1 (later steps threshold on that scale), nothing for
an image without classes, and the same maps every time it is asked.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from igcam_cli.artifacts import RunDir, write_proposals
from igcam_cli.backbones import build_backbone
from igcam_cli.cli import COMMANDS
from igcam_cli.datasets import DatasetSpec, load_dataset
from igcam_cli.demo_data import make_demo_dataset
from igcam_cli.errors import IgcamError
from igcam_cli.images import read_image
from igcam_cli.methods import METHODS, Chain, MethodContext, method_help, parse_methods
from igcam_cli.methods.multiscale import multiscale_cam
from igcam_cli.models import CamNet
from igcam_cli.options import NoOptions
from igcam_cli.refiners import REFINERS, Maps, RefineChain, RefineContext, parse_refiners
from igcam_cli.transforms import normalise, to_tensor

# Small settings, so that every method runs in seconds on a CPU.
OPTIONS = {
    "lpcam": METHODS["lpcam"].Options(k=2, samples=64, iters=5),
    "ccam": METHODS["ccam"].Options(rounds=1),
    "igcam": METHODS["igcam"].Options(candidates=8, top=3, crop_size=32),
}
SPECS = [*METHODS, "lpcam+igcam", "cpmc+ccam"]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> MethodContext:
    """A random-weight classifier over 8 generated images, with proposals for each."""
    root = tmp_path_factory.mktemp("methods")
    data = make_demo_dataset(root / "data", n_train=8, size=64, seed=5)
    dataset = load_dataset(DatasetSpec(voc=data))
    torch.manual_seed(0)
    model = CamNet(build_backbone("efficientnet-lite0", pretrained=False),
                   dataset.num_classes).eval()
    checkpoint = root / "classifier.pt"
    checkpoint.write_bytes(b"stands in for the checkpoint the prototypes are keyed to")
    run = RunDir(root / "run")
    proposals = run.step("propose")
    proposals.mkdir(parents=True)
    boxes = np.array([[0, 0, 64, 64], [8, 8, 40, 40], [20, 10, 60, 50], [0, 30, 30, 64]])
    for sample in dataset.samples:
        write_proposals(proposals / f"{sample.id}.npz", boxes, np.linspace(1, 0.25, 4),
                        sample.image, (64, 64))
    return MethodContext(model, torch.device("cpu"), (1.0, 0.5), True, dataset, run,
                         checkpoint, None, False)


def _inputs(context: MethodContext) -> tuple:
    sample = next(s for s in context.dataset.samples if len(s.labels or ()) >= 2)
    image = to_tensor(read_image(sample.image))
    cams, _ = multiscale_cam(context.model, image, context.scales, context.flip)
    classes = list(sample.labels or ())
    return sample, image, normalise(cams[classes]), classes


@pytest.mark.parametrize("spec", SPECS)
def test_method_contract(context: MethodContext, spec: str) -> None:
    method = Chain(parse_methods(spec), context, OPTIONS)
    sample, image, cams, classes = _inputs(context)
    maps = method(sample, image, cams.clone(), classes)
    assert maps.shape == cams.shape and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    again = method(sample, image, cams.clone(), classes)
    torch.testing.assert_close(again, maps, rtol=0, atol=0)  # deterministic
    empty = method(sample, image, cams[:0], [])
    assert empty.shape == (0, *cams.shape[1:])


def test_every_method_has_options_on_the_command_line_and_a_summary() -> None:
    cli = {p.name for p in COMMANDS["cam"].registries[0].specs()}
    for name, method in METHODS.items():
        assert method.name == name and method.__doc__
        assert name + ": " in method_help()
        method.Options()  # the defaults are valid options
        fields = [f.name for f in dataclasses.fields(method.Options) if "help" in f.metadata]
        # the gradient family and Eigen-CAM have none; every option of the others is there
        assert all(f"{name}_{field}" in cli for field in fields), name
        assert fields or method.Options is NoOptions, name


def test_unknown_method_is_a_user_error() -> None:
    with pytest.raises(IgcamError, match="--method must be cam"):
        parse_methods("igcam+nope")
    assert parse_methods("cam") == [] and parse_methods("lpcam+igcam") == ["lpcam", "igcam"]


def test_chain_feeds_each_method_the_maps_of_the_one_before(context: MethodContext) -> None:
    sample, image, cams, classes = _inputs(context)
    first = METHODS["cpmc"](context)(sample, image, cams.clone(), classes)
    chained = Chain(["cpmc", "ccam"], context, OPTIONS)(sample, image, cams.clone(), classes)
    then = METHODS["ccam"](context, OPTIONS["ccam"])(sample, image, first, classes)
    torch.testing.assert_close(chained, then)



def _architecture_example(path: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The module that ARCHITECTURE.md shows as ``# igcam_cli/<path>``, exactly as written."""
    text = (Path(__file__).resolve().parents[1] / "ARCHITECTURE.md").read_text()
    code = text.split(f"# igcam_cli/{path}\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("igcam_cli." + path.removesuffix(".py").replace("/", "."))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "ARCHITECTURE.md", "exec"), module.__dict__)
    return module


def test_the_architecture_example_is_a_whole_method(context: MethodContext,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ARCHITECTURE.md's smallest method, as written there, plus its registry line: it runs,
    keeps the contract and gets its command-line option."""
    module = _architecture_example("methods/sharpen.py", monkeypatch)
    monkeypatch.setitem(METHODS, "sharpen", module.Sharpen)  # the registry line

    sample, image, cams, classes = _inputs(context)
    maps = Chain(parse_methods("sharpen"), context, {})(sample, image, cams.clone(), classes)
    torch.testing.assert_close(maps, normalise(cams ** 2))
    options = module.Sharpen.Options(power=3.0)
    cubed = Chain(["sharpen"], context, {"sharpen": options})(sample, image, cams, classes)
    torch.testing.assert_close(cubed, normalise(cams ** 3))
    assert "sharpen_power" in {p.name for p in COMMANDS["cam"].registries[0].specs()}
    COMMANDS["cam"].specs("cam")  # no option of cam's declared twice


def test_the_architecture_example_refiner_is_set_up_once_by_its_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ARCHITECTURE.md's refiner that needs set-up, as written there, plus its registry line:
    the chain sets it up once before its first image, and it smooths as it says."""
    module = _architecture_example("refiners/smooth.py", monkeypatch)
    monkeypatch.setitem(REFINERS, "smooth", module.Smooth)  # the registry line
    set_up = []
    original = module.Smooth.setup
    monkeypatch.setattr(module.Smooth, "setup", lambda self: set_up.append(original(self)))

    cams = np.zeros((1, 32, 32), np.float32)
    cams[0, 8:24, 8:24] = 1.0  # a region
    cams[0, 2, 28] = 1.0  # an isolated peak
    chain = RefineChain(parse_refiners("smooth"), RefineContext(
        RunDir(tmp_path), torch.device("cpu"), 0.5, 0), {})
    maps = Maps(cams, np.array([0]), tmp_path / "image.png")
    for _ in range(2):
        smoothed = chain(maps).cams
    assert len(set_up) == 1
    assert smoothed[0, 16, 16] > 0.99 and smoothed[0, 2, 28] < 0.5  # the peak faded
    assert chain(replace(maps, cams=cams[:0], classes=np.array([], int))).labels.shape == (32, 32)
    assert "smooth_sigma" in {p.name for p in COMMANDS["refine"].registries[0].specs()}
    COMMANDS["refine"].specs("refine")  # no option of refine's declared twice
