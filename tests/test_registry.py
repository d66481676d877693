"""One registry for every kind of part: registering, looking up, the options each part adds
to the command line (checked for names declared twice), and the set-up every part gets once
in the process that runs it."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from harness import igcam, ok, one_line_error
from PIL import Image
from typer.testing import CliRunner

import igcam_cli.steps.run as run_step
import igcam_cli.steps.train_aff as train_aff_step
from igcam_cli import cli
from igcam_cli.artifacts import PLAIN_CAM, RunDir, read_json, write_cam, write_json
from igcam_cli.backbones import BACKBONES
from igcam_cli.datasets import FORMATS
from igcam_cli.errors import IgcamError
from igcam_cli.methods import METHODS, CamMethod
from igcam_cli.options import option
from igcam_cli.refiners import REFINERS, Maps, Refiner, required_steps
from igcam_cli.registry import Registry
from igcam_cli.steps import STEPS, Step
from igcam_cli.steps.refine import RefineConfig, refine
from igcam_cli.training import STAGES


@dataclass(frozen=True)
class Named:
    name: str


def test_a_registry_keeps_order_refuses_a_name_twice_and_names_the_choices() -> None:
    registry: Registry[Named] = Registry("widget", [Named("b"), Named("a")])
    assert registry.register(Named("c")) == Named("c")  # returned, so it decorates a class
    registry.register(Named("x"), "d")
    assert list(registry) == ["b", "a", "c", "d"] and len(registry) == 4
    assert "a" in registry and "z" not in registry and registry["d"] == Named("x")
    assert dict(registry.items())["a"] == Named("a") and registry.get("z") is None
    with pytest.raises(IgcamError, match="widget 'a' is registered twice"):
        registry.register(Named("a"))
    with pytest.raises(IgcamError, match="^unknown widget 'z'; choose from b, a, c, d$"):
        registry["z"]
    with pytest.raises(KeyError):  # a mapping still
        registry["z"]


@pytest.mark.parametrize("registry", [METHODS, REFINERS, STAGES, FORMATS, BACKBONES],
                         ids=lambda r: r.what)
def test_every_kind_of_part_is_in_a_registry(registry: Registry) -> None:
    assert isinstance(registry, Registry) and len(registry) > 0
    for name, part in registry.items():
        assert getattr(part, "name", name) == name


def test_parts_declare_the_steps_they_need() -> None:
    assert required_steps(["rw", "crf"]) == ["train-aff"]
    assert required_steps(["par", "crf"]) == [] and required_steps([]) == []


def test_no_command_declares_an_option_twice() -> None:
    """Over every command and every registry its parts come from: each option name (long,
    --no- and short forms, and the Python name) belongs to one owner."""
    for name, command in cli.COMMANDS.items():
        command.specs(name)  # raises on a name declared twice
    covered = {r.attribute for c in cli.COMMANDS.values() for r in c.registries}
    assert covered == {"METHODS", "REFINERS", "STAGES"}  # formats, backbones add no options


def _names(command: str) -> set[str]:
    return {spec.name for spec in cli.COMMANDS[command].specs(command)}


def test_run_takes_every_option_that_cam_and_refine_take() -> None:
    run = _names("run")
    for command in ("cam", "refine"):  # the options of their methods and of their refiners
        assert {spec.name for r in cli.COMMANDS[command].registries
                for _, specs in r.owned() for spec in specs} <= run
    assert {"lpcam_k", "crf_iters", "rw_steps", "method", "refine"} <= run


@dataclass(frozen=True)
class SideOptions:
    side: int = option(3, "A field that, prefixed with the part's name, is --max-side.")


class Max(Refiner):
    """A refiner named so that its option collides with refine's --max-side."""

    name = "max"
    Options = SideOptions

    def __call__(self, maps: Maps) -> Maps:
        return maps


class Batch(CamMethod):
    """A method whose --batch-size collides with run's own option."""

    name = "batch"

    @dataclass(frozen=True)
    class Options:
        size: int = option(1, "Collides with run's --batch-size.")

    def __call__(self, sample, image, cams, classes):  # noqa: ANN001, ANN204 - never called
        return cams


def test_a_colliding_part_is_a_clear_error_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REFINERS, "max", Max)
    with pytest.raises(IgcamError, match="^igcam refine: option --max-side is declared by both "
                                         "igcam refine's own options and refiner 'max'"):
        cli.COMMANDS["refine"].specs("refine")
    one_line_error(igcam("refine", "--help"), "--max-side is declared by both")

    monkeypatch.setitem(METHODS, "batch", Batch)
    with pytest.raises(IgcamError, match="option --batch-size is declared by both igcam run's "
                                         "own options and CAM method 'batch'"):
        cli.COMMANDS["run"].specs("run")


@dataclass(frozen=True)
class CountedOptions:
    log: Path = option(Path("."), "Folder that set-ups and calls are logged into.")


class Counted(Refiner):
    """Needs its set-up: scales the maps by a factor that only setup() makes, and logs each
    set-up and each call by process, so that a test can count them."""

    name = "counted"
    Options = CountedOptions

    def _log(self, what: str) -> None:
        (self.options.log / f"{what}.{os.getpid()}.{uuid.uuid4().hex}").touch()

    def setup(self) -> None:
        self._log("setup")
        self.factor = 0.5

    def __call__(self, maps: Maps) -> Maps:
        self._log("call")
        return replace(maps, cams=maps.cams * self.factor)  # fails unless set up


def _by_process(log: Path, what: str) -> list[str]:
    return sorted(p.name.split(".")[1] for p in log.glob(f"{what}.*"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_refiner_is_set_up_once_in_each_process_that_runs_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setitem(REFINERS, "counted", Counted)
    cams = tmp_path / "cams"
    cams.mkdir()
    for index in range(4):
        maps = np.zeros((1, 8, 8), np.float16)
        maps[0, 2:6, 2:6] = 1.0
        write_cam(cams / f"{index}.npz", np.array([0]), maps, np.array([0.9]),
                  tmp_path / f"{index}.png")
    log = tmp_path / "log"
    log.mkdir()
    out = refine(RefineConfig(run=tmp_path / "run", cams=cams, method="counted",
                              threshold=0.4, workers=workers, io_workers=0,
                              method_options={"counted": CountedOptions(log)}))
    assert len(list(out.glob("*.png"))) == 4
    setups, calls = _by_process(log, "setup"), _by_process(log, "call")
    assert len(calls) == 4 and sorted(set(calls)) == setups  # once in each process that ran it
    if workers == 1:
        assert setups == [str(os.getpid())]
    else:
        assert str(os.getpid()) not in setups  # the workers set it up, not the main process


class Crash(Refiner):
    """Dies as a crash in a native library (or the out-of-memory killer) kills a worker."""

    name = "crash"

    def __call__(self, maps: Maps) -> Maps:
        os.kill(os.getpid(), signal.SIGKILL)
        return maps


def test_a_worker_that_dies_is_one_error_not_a_step_that_waits_forever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REFINERS, "crash", Crash)
    cams = tmp_path / "cams"
    cams.mkdir()
    for index in range(3):
        write_cam(cams / f"{index}.npz", np.array([0]), np.ones((1, 8, 8), np.float16),
                  np.array([0.9]), tmp_path / f"{index}.png")
    with pytest.raises(IgcamError, match="a worker process died"):
        refine(RefineConfig(run=tmp_path / "run", cams=cams, method="crash", threshold=0.4,
                            workers=2, io_workers=0))


def test_run_parses_method_and_refiner_options(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`igcam run --method lpcam --lpcam-k 4 --refine crf --crf-iters 3` reaches run's config
    as the options of the method and of the refiner, each under its own name."""
    got: list[run_step.RunConfig] = []
    monkeypatch.setattr(run_step, "run", got.append)
    result = CliRunner().invoke(cli.build_app(["run"]), [
        "run", "--run", str(tmp_path), "--method", "lpcam", "--lpcam-k", "4", "--refine", "crf",
        "--crf-iters", "3"])
    assert result.exit_code == 0, result.output
    config = got[0]
    assert config.method == "lpcam" and config.method_options["lpcam"].k == 4
    assert config.refine == "crf" and config.refiner_options["crf"].iters == 3
    assert config.refiner_options["rw"] == REFINERS["rw"].Options()  # the others' defaults


def test_run_gives_cam_and_refine_their_options_and_runs_what_the_refiners_need_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[tuple[str, object]] = []

    def step(name: str, returns: Path | None = None):  # noqa: ANN202 - a stand-in step
        return lambda config: steps.append((name, config)) or returns

    monkeypatch.setattr(run_step, "train_cls", step("train-cls"))
    monkeypatch.setattr(run_step, "cam", step("cam", tmp_path / "cam-lpcam"))
    monkeypatch.setattr(train_aff_step, "train_aff", step("train-aff"))  # found through STEPS
    monkeypatch.setattr(run_step, "refine", step("refine", tmp_path / "masks"))
    monkeypatch.setattr(run_step, "write_overlays", lambda *args: [])
    monkeypatch.setattr(run_step, "report", step("report"))
    methods = {"lpcam": METHODS["lpcam"].Options(k=4)}
    refiners = {"rw": REFINERS["rw"].Options(steps=8)}
    run_step.run(run_step.RunConfig(run=tmp_path, method="lpcam", refine="rw+crf",
                                    method_options=methods, refiner_options=refiners))
    names = [name for name, _ in steps]
    assert names == ["train-cls", "cam", "train-aff", "refine", "report"]
    configs = dict(steps)
    assert configs["cam"].method_options == methods
    assert isinstance(configs["train-aff"], train_aff_step.AffinityConfig)
    assert configs["train-aff"].cams == tmp_path / "cam-lpcam"
    assert configs["refine"].method == "rw+crf" and configs["refine"].method_options == refiners

    steps.clear()  # a chain without rw needs no train-aff
    run_step.run(run_step.RunConfig(run=tmp_path, method="lpcam", refine="par+crf"))
    assert "train-aff" not in [name for name, _ in steps]


# The checklist's refiner that needs a training step, as ARCHITECTURE.md says to add one: the
# refiner and its registry entry, the step and its STEPS entry; nothing in run or cli names it.
@dataclass(frozen=True)
class FitLevelConfig:
    """The fields `igcam run` passes to a step a refiner needs."""

    run: Path = option(Path("."), "Run directory.")
    cams: Path | None = option(None, "CAM folder (default RUN/cam).")
    device: str = option("cpu", "Device.")
    workers: int = option(1, "Worker processes.", min=1)
    strict: bool = option(False, "Stop at the first bad image.")
    resume: bool = option(False, "Continue a stopped fit.")
    level: float = option(0.5, "The level the step 'learns'.", above=0)


def fit_level(config: FitLevelConfig) -> Path:
    """Write the level that the refiner reads back: the step's trained artifact."""
    out = RunDir(config.run).step("fit-level")
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / "level.json", {"level": config.level})


class Level(Refiner):
    """Scores divided by the level that `igcam fit-level` wrote."""

    name = "level"
    needs = ("fit-level",)

    def setup(self) -> None:
        fitted = self.context.run.step("fit-level") / "level.json"
        self.level = read_json(fitted, "the fitted level", "run `igcam fit-level` first")["level"]

    def __call__(self, maps: Maps) -> Maps:
        return replace(maps, cams=maps.cams / self.level)


def test_a_refiner_that_needs_a_training_step_is_its_file_its_step_and_two_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REFINERS, "level", Level)
    monkeypatch.setitem(STEPS, "fit-level", Step(f"{__name__}:FitLevelConfig:fit_level",
                                                 "Fit the level of `refine --method level`."))
    assert "fit-level" in ok(igcam("--help")).stdout  # the entry is also the command
    run = tmp_path / "run"
    cams = RunDir(run).cam(PLAIN_CAM)
    cams.mkdir(parents=True)
    maps = np.zeros((1, 8, 8), np.float16)
    maps[0, :, :4] = 0.3  # under the threshold 0.4 as it is, over it once divided by 0.5
    write_cam(cams / "a.npz", np.array([0]), maps, np.array([0.9]), tmp_path / "a.png")
    one_line_error(igcam("refine", "--run", run, "--method", "level", "--threshold", 0.4),
                   "the fitted level")  # set-up fails before any image without the step
    ok(igcam("fit-level", "--run", run, "--level", 0.5))
    ok(igcam("refine", "--run", run, "--method", "level", "--threshold", 0.4, "--workers", 1))
    labels = np.asarray(Image.open(RunDir(run).refine("level") / "a.png"))
    assert (labels[:, :4] == 1).all() and (labels[:, 4:] == 0).all()

    ran: list[str] = []

    def stand_in(name: str, returns: Path | None = None):  # noqa: ANN202 - a stand-in step
        return lambda config: ran.append(name) or returns

    monkeypatch.setattr(run_step, "train_cls", stand_in("train-cls"))
    monkeypatch.setattr(run_step, "cam", stand_in("cam", cams))
    monkeypatch.setattr(run_step, "refine", stand_in("refine", tmp_path / "masks"))
    monkeypatch.setattr(run_step, "write_overlays", lambda *args: [])
    monkeypatch.setattr(run_step, "report", stand_in("report"))
    fit = fit_level
    monkeypatch.setattr(sys.modules[__name__], "fit_level",
                        lambda config: ran.append("fit-level") or fit(config))
    run_step.run(run_step.RunConfig(run=tmp_path / "run2", refine="level+crf"))
    assert ran == ["train-cls", "cam", "fit-level", "refine", "report"]
    assert (RunDir(tmp_path / "run2").step("fit-level") / "level.json").is_file()
