"""Config fields as command-line options: one declaration gives the option, its default, its
bounds and its check."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from igcam_cli.cli import COMMANDS, _build, _specs
from igcam_cli.errors import IgcamError
from igcam_cli.options import REQUIRED, check, nested, option
from igcam_cli.training import STAGES


@dataclass(frozen=True)
class Inner:
    temperature: float = option(0.1, "Softmax temperature.", above=0)


@dataclass(frozen=True)
class Outer:
    name: str = option(REQUIRED, "A required option.")
    size: int = option(500, "Pixels.", min=32)
    share: float = option(0.5, "A share.", min=0, below=1)
    mode: str = option("fast", "Speed.", choices=("fast", "quality"))
    scales: tuple[float, ...] = option((1.0, 0.5), "Scales.")
    inner: Inner = nested(Inner, prefix="fpn-")
    internal: int = 7  # not an option
    hidden: list[int] = field(default_factory=list)


def test_each_option_field_becomes_one_parameter_with_its_default() -> None:
    specs = {spec.name: spec for spec in _specs(Outer)}
    assert list(specs) == ["name", "size", "share", "mode", "scales", "fpn_temperature"]
    params = {name: spec.parameter() for name, spec in specs.items()}
    assert params["name"].default is ... and specs["name"].required
    assert params["size"].default == 500 and params["scales"].default == "1.0,0.5"
    assert specs["scales"].kind == "list" and specs["mode"].choices == ("fast", "quality")


def test_parsed_values_build_the_config_nested_ones_included() -> None:
    config = _build(Outer, {"name": "x", "size": 64, "share": 0.25, "mode": "quality",
                            "scales": "1.0, 2.0", "fpn_temperature": 0.5})
    assert config == Outer("x", 64, 0.25, "quality", (1.0, 2.0), Inner(0.5))
    with pytest.raises(IgcamError, match="--scales must be a comma-separated list of float"):
        _build(Outer, {"name": "x", "size": 64, "share": 0.25, "mode": "fast",
                       "scales": "1,big", "fpn_temperature": 0.5})


@pytest.mark.parametrize(("changes", "message"), [
    ({"size": 16}, "--size must be at least 32, got 16"),
    ({"share": 1.0}, "--share must be at least 0 and below 1, got 1.0"),
    ({"mode": "slow"}, "--mode must be one of fast, quality, got 'slow'"),
    ({"inner": Inner(0.0)}, "--fpn-temperature must be above 0, got 0.0"),
])
def test_check_names_the_option_and_its_bounds(changes: dict, message: str) -> None:
    check(Outer("x"))
    with pytest.raises(IgcamError, match=message):
        check(Outer(**{"name": "x", **changes}))


def test_every_training_stage_option_is_a_train_cls_option() -> None:
    names = {p.name for p in COMMANDS["train-cls"].registries[0].specs()}
    for stage in STAGES.values():
        fields = [f.name for f in dataclasses.fields(stage.Options) if "help" in f.metadata]
        assert all(name in names for name in fields), stage.name
    assert {"consistency_weight", "rcm_weight", "mam_scales"} <= names
