"""Config fields that carry their command-line help: every default is written once.

A step's config (and a CAM method's or training stage's options) is a dataclass; a field made
with :func:`option` is also a command-line option, named after the field (``batch_size`` ->
``--batch-size``), with the help, bounds and default given here. ``cli.py`` turns these
dataclasses into Typer commands (:mod:`igcam_cli.cli`), so adding a field here adds the option,
and nothing else has to repeat its default. A field made with plain ``field()`` or a bare
default is internal and never on the command line. A field whose type is itself a dataclass
is flattened into its fields' options (``DatasetSpec`` gives every step the same data options).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from igcam_cli.errors import IgcamError

REQUIRED: Any = MISSING  # the default of an option that has none


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None,
           choices: tuple[str, ...] | None = None, flag: str | None = None,
           short: str | None = None, panel: str | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    Bounds (``min``/``max`` inclusive, ``above``/``below`` exclusive) and ``choices`` are
    declared once, here: the parser shows and enforces them, and :func:`check` enforces them
    for configs built in Python. ``flag`` overrides the option's name
    (``--head-bias/--no-head-bias``), ``short`` adds a one-letter alias, and ``REQUIRED``
    makes the option one a user must give. ``--help`` shows the help's first sentence, in
    the ``panel`` named (default: the command's own options); ``igcam explain`` all of it.
    """
    metadata = {"help": help, "min": min, "max": max, "above": above, "below": below,
                "choices": choices, "flag": flag, "short": short, "panel": panel}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NoOptions:
    """The options of a part (method, training stage) that has none of its own."""


def _bounds(meta: dict[str, Any]) -> str:
    low = (f"at least {meta['min']}" if meta["min"] is not None
           else f"above {meta['above']}" if meta["above"] is not None else "")
    high = (f"at most {meta['max']}" if meta["max"] is not None
            else f"below {meta['below']}" if meta["below"] is not None else "")
    return " and ".join(part for part in (low, high) if part)


def check(config: Any, prefix: str = "") -> None:
    """Raise a one-line :class:`IgcamError` for the first option of ``config`` (a dataclass,
    nested ones included) outside its declared bounds or choices, or a float that is NaN or
    infinite (no option means anything by them, and NaN slips through every comparison); a
    list option's bounds hold for each of its values. ``prefix`` is the options' command-line
    prefix (``ccam-`` for ``--ccam-rounds``)."""
    for f in fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if meta.get("nested"):
            check(value, prefix + meta["prefix"])
        if "help" not in meta or value is None:
            continue
        name = "--" + prefix + f.name.replace("_", "-")
        if meta["choices"] is not None and value not in meta["choices"]:
            raise IgcamError(f"{name} must be one of {', '.join(meta['choices'])}, "
                             f"got {value!r}")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise IgcamError(f"{name} must be a finite number, got {item}")
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            low, high = meta["min"], meta["max"]
            if ((low is not None and item < low) or (high is not None and item > high)
                    or (meta["above"] is not None and item <= meta["above"])
                    or (meta["below"] is not None and item >= meta["below"])):
                raise IgcamError(f"{name} must be {_bounds(meta)}, got {item}")


def nested(factory: type, prefix: str = "", panel: str | None = None) -> Any:
    """A field holding another options dataclass, whose options are flattened into this one's
    (shown in ``panel`` unless they name their own)."""
    return field(default_factory=factory,
                 metadata={"prefix": prefix, "nested": True, "panel": panel})


def comma_list(text: str, kind: type, option_name: str) -> tuple:
    """``"1.0,0.5"`` -> ``(1.0, 0.5)``: how lists are written on a command line."""
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise IgcamError(f"{option_name} must be a comma-separated list of {kind.__name__} "
                         f"values, got {text!r}") from None


# The options most steps share, so that their help reads the same everywhere, and the
# --help panels they are shown in.
DATA = "Data"
MACHINE = "Device and workers"
RESUME = "Resume and errors"


def run_dir() -> Any:
    return option(REQUIRED, "Run directory holding every step's artifacts (created if missing).",
                  short="-r")


def device() -> Any:
    return option("auto", "auto (CUDA when available), cpu, cuda or cuda:N.", panel=MACHINE)


def strict() -> Any:
    return option(False, "Stop at the first unreadable image instead of warning, skipping and "
                         "counting it.", panel=RESUME)


def overwrite() -> Any:
    return option(False, "Redo images whose output already exists (default: skip them, so "
                         "reruns resume).", panel=RESUME)


def wait() -> Any:
    return option(False, "When another igcam process is writing the output folder, wait for "
                         "it to finish instead of stopping with a line that names it.",
                  panel=RESUME)


def shard() -> Any:
    return option(None, "I/N: process only every N-th image starting at I (0-based), for "
                        "cluster array jobs. Under torchrun each process takes "
                        "RANK/WORLD_SIZE by itself (no --shard).", panel=MACHINE)


# More processes than any machine has cores; a count past a C int stopped the process pool
# with a traceback.
MAX_WORKERS = 1024


def workers(default: int = 1) -> Any:
    return option(default, "Worker processes for CPU-bound work.", min=1, max=MAX_WORKERS,
                  panel=MACHINE)


# Threads of --io-workers: on the 2-core development machine 2 gave the most CAM files per
# second of the values tried (bench/cam_io.py, bench/RESULTS.md). At most MAX_IO_WORKERS:
# the runner holds 2N images in flight, and a count past a C int stopped it with a traceback.
DEFAULT_IO_WORKERS = 2
MAX_IO_WORKERS = 256


def io_workers() -> Any:
    return option(DEFAULT_IO_WORKERS, "Threads that decode images ahead of the main thread's "
                  "work and compress and write outputs behind it (0: everything on the main "
                  "thread, one image after the other).", min=0, max=MAX_IO_WORKERS,
                  panel=MACHINE)


def checkpoint() -> Any:
    return option(None, "Classifier checkpoint (default RUN/train-cls/classifier.pt).")


def out(default: str) -> Any:
    return option(None, f"Output folder (default {default}).")


def scales(default: tuple[float, ...]) -> Any:
    return option(default, "Comma-separated CAM scales.", above=0, max=MAX_SCALE)


MAX_SCALE = 4.0  # an image enlarged 4x is already far past what the features resolve
MAX_SIDE = 4096  # pixels: crops and working sides above this ask for tens of GB



def parse_chain(spec: str, registry: Mapping[str, object], plain: str) -> list[str]:
    """The names of a ``--method`` chain ``a+b`` in order; ``plain`` (the step's name for no
    stage at all, e.g. ``cam`` or ``none``) gives []; an unknown name is a user error."""
    names = [n.strip() for n in spec.split("+") if n.strip() and n.strip() != plain]
    unknown = [n for n in names if n not in registry]
    if unknown or (not names and spec.strip() != plain):
        raise IgcamError(f"--method must be {plain} or one of these, or several of them joined "
                         f"by '+': {', '.join(registry)}; got {spec!r}")
    return names
