"""The ``igcam`` command line, generated from the steps' config dataclasses.

Each subcommand is one step of :data:`igcam_cli.steps.STEPS`: its options are
the config's :func:`igcam_cli.options.option` fields (help, bounds and default written once,
there); ``igcam cam`` adds every registered CAM method's options (``--<method>-<field>``),
``igcam refine`` every refiner's, ``igcam run`` both, and ``igcam train-cls`` every training
stage's, so a new method, refiner, stage or option never touches this file. No two options of
a command may share a name, which is checked when the command is built. Only the command
being run is built (and its step imported). Every user mistake surfaces as one ``error: ...``
line and exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from typer.exceptions import Abort, TyperException

from igcam_cli import __version__
from igcam_cli.errors import IgcamError, console, print_error
from igcam_cli.options import check, comma_list
from igcam_cli.registry import Registry
from igcam_cli.steps import STEPS, Step

LISTS = {tuple[float, ...]: float, tuple[str, ...]: str}  # shown as comma-separated text


def _option_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(CLI name stem, field, type) of every option of ``cls``, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            found += _option_fields(hints[f.name], prefix + f.metadata["prefix"])
        elif "help" in f.metadata:
            found.append((prefix + f.name.replace("_", "-"), f, hints[f.name]))
    return found


def _parameters(cls: type, prefix: str = "", help_prefix: str = "") -> list[inspect.Parameter]:
    """Typer parameters for the options of ``cls``: one per :func:`option` field."""
    params = []
    for stem, f, kind in _option_fields(cls, prefix):
        meta = f.metadata
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...  # a required option
        if meta["choices"] is not None:  # the parser lists and checks them
            kind = Literal[meta["choices"]]
        if kind in LISTS:
            kind, default = str, ",".join(map(str, default)) if default is not ... else ...
        decls = [meta["flag"] or (f"--{stem}/--no-{stem}" if kind is bool else f"--{stem}")]
        if meta["short"]:
            decls.append(meta["short"])
        info = typer.Option(*decls, help=help_prefix + meta["help"], min=meta["min"],
                            max=meta["max"], show_default=default not in (None, ...))
        params.append(inspect.Parameter(stem.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY,
                                        default=default, annotation=Annotated[kind, info]))
    return params


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """The config ``cls`` from parsed option values (keys as :func:`_parameters` named them)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            kwargs[f.name] = _build(hints[f.name], values, prefix + f.metadata["prefix"])
        elif "help" in f.metadata:
            stem = prefix + f.name.replace("_", "-")
            value = values[stem.replace("-", "_")]
            if hints[f.name] in LISTS:
                value = comma_list(value, LISTS[hints[f.name]], f"--{stem}")
            kwargs[f.name] = value
    return cls(**kwargs)


class RegistryOptions:
    """The options of every part in a registry (CAM methods, refiners, training stages), for
    one command.

    Each part's ``Options`` dataclass gives its options, named as the registry's
    ``option_prefix`` says (``--<name>-<field>``, or the bare field for training stages); the
    parsed values become ``{part name: options}`` in the config field ``into``. The registry is
    imported when first needed, so that commands which do not use it start fast.
    """

    def __init__(self, module: str, attribute: str, into: str) -> None:
        self.module, self.attribute, self.into = module, attribute, into

    @property
    def registry(self) -> Registry:
        return getattr(importlib.import_module(self.module), self.attribute)

    def owned(self) -> list[tuple[str, list[inspect.Parameter]]]:
        """(owner, its parameters) for each part: the owner names it in collision errors."""
        registry = self.registry
        return [(f"{registry.what} {name!r}",
                 _parameters(part.Options, registry.option_prefix(name),
                             f"{name}: " if registry.prefixed else ""))
                for name, part in registry.items()]

    def parameters(self) -> list[inspect.Parameter]:
        return [p for _, params in self.owned() for p in params]

    def finish(self, config: Any, values: dict[str, Any]) -> Any:
        """``config`` with every part's options parsed and checked (those of parts not chosen
        too: a NaN is a mistake whichever part it was meant for)."""
        registry = self.registry
        parts = {name: _build(part.Options, values, registry.option_prefix(name))
                 for name, part in registry.items()}
        for name, options in parts.items():
            check(options, registry.option_prefix(name))
        return dataclasses.replace(config, **{self.into: parts})



def _names(param: inspect.Parameter) -> list[str]:
    """Every name a parameter answers to: its option strings (``--x``, ``--no-x``, ``-x``)
    and the Python name its value is passed under."""
    info = typing.get_args(param.annotation)[1]
    decls = [info.default, *info.param_decls]  # the first declaration is Option's first argument
    return [*(name for decl in decls for name in decl.split("/")), param.name]


def _unique_parameters(command: str, owned: list[tuple[str, list[inspect.Parameter]]]
                      ) -> list[inspect.Parameter]:
    """The parameters of every owner, after checking that no name is declared twice: a part
    whose prefixed option equals a step's (a method ``max`` with a field ``side`` against
    ``--max-side``) is an error naming both owners, not a traceback from the parser."""
    seen: dict[str, str] = {}
    for owner, params in owned:
        for param in params:
            for name in dict.fromkeys(_names(param)):
                if name in seen:
                    raise IgcamError(f"igcam {command}: option {name} is declared by both "
                                     f"{seen[name]} and {owner}; rename one of them")
                seen[name] = owner
    return [p for _, params in owned for p in params]


@dataclass(frozen=True)
class Command:
    """One subcommand: a step of :data:`igcam_cli.steps.STEPS` and the part options it takes."""

    step: Step

    @property
    def help(self) -> str:
        return self.step.help

    @property
    def registries(self) -> tuple[RegistryOptions, ...]:
        """The parts whose options the command also takes."""
        return tuple(RegistryOptions(*registry.split(":"), into)
                     for registry, into in self.step.parts)

    def parameters(self, name: str) -> list[inspect.Parameter]:
        """Every option of ``igcam NAME``: the config's, then each registry's parts', checked
        for names declared twice."""
        config, _ = self.step.load()
        return _unique_parameters(name, [(f"igcam {name}'s own options", _parameters(config)),
                                        *(o for r in self.registries for o in r.owned())])

    def register(self, app: typer.Typer, name: str) -> None:
        """Add ``igcam NAME`` to ``app``: parse the config's options, call the step."""
        config, step = self.step.load()
        registries = self.registries

        def run_step(**values: Any) -> None:
            built = _build(config, values)
            check(built)  # bounds, choices and NaN for every command, before any work
            for registry in registries:
                built = registry.finish(built, values)
            step(built)

        run_step.__signature__ = inspect.Signature(self.parameters(name))  # type: ignore
        app.command(name, help=self.help)(run_step)


class _Commands(Mapping[str, Command]):
    """The subcommands, one per entry of :data:`igcam_cli.steps.STEPS`, read when asked (so a
    step added to it, even by a test, is a command)."""

    def __getitem__(self, name: str) -> Command:
        return Command(STEPS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(STEPS)

    def __len__(self) -> int:
        return len(STEPS)


COMMANDS = _Commands()


def _version(value: bool) -> None:
    if value:
        print(f"igcam {__version__}")
        raise typer.Exit()


def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
] = False) -> None:
    """Pixel-level pseudo-masks from image-level labels."""


def build_app(argv: Sequence[str]) -> typer.Typer:
    """The app with the command that ``argv`` runs; only the list of commands for anything else.

    A step's module imports torch, which takes seconds: ``igcam --help``, ``--version`` and a
    mistyped command should not wait for every step's. A new app each time, so that a second
    :func:`main` in one process (the tests) does not find the first one's command.
    """
    app = typer.Typer(
        name="igcam", no_args_is_help=True, pretty_exceptions_enable=False,
        help="Pixel-level pseudo-masks from image-level labels (weakly supervised "
             "segmentation). Steps read and write artifacts in a run directory: train-cls -> "
             "cam -> refine -> eval; `igcam run` chains them and `igcam demo` shows them on "
             "generated data.")
    app.callback()(_main)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    if wanted in COMMANDS:
        COMMANDS[wanted].register(app, wanted)
        return app
    for name, entry in COMMANDS.items():  # the listing needs names and help only
        app.command(name, help=entry.help)(lambda: None)
    return app


INTERRUPTED = 130  # the exit status of a step stopped by Ctrl-C (128 + SIGINT)


def _format_warning(message: Warning | str, *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry: user errors become one line on stderr and exit status 2.

    Returns the exit status (the console script exits with it). ``argv`` defaults to the
    command line; the warning format is set only while the command runs, so that ``main`` can
    be called again in the same process.
    """
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        return _run(args)
    finally:
        warnings.formatwarning = previous


def _run(args: list[str]) -> int:
    try:
        app = build_app(args)  # a part registered twice or an option declared twice: one line
        code = app(args=args, standalone_mode=False)
    except TyperException as error:  # a bad option: one line as well, not the parser's box
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        command = [a for a in args[:1] if a in COMMANDS]
        print_error(f"{message} (see `{' '.join(['igcam', *command])} --help`)")
        return 2
    except IgcamError as error:
        print_error(str(error))
        return 2
    except OSError as error:
        reason = error.strerror or str(error)
        print_error(f"{os.fsdecode(error.filename)}: {reason}" if error.filename else reason)
        return 2
    except (KeyboardInterrupt, Abort):
        code = INTERRUPTED
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code rather than raising it
        console.print("interrupted: finished files are kept; rerun the same command to resume")
    return code if isinstance(code, int) else 0
