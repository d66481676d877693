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

import contextlib
import dataclasses
import errno
import importlib
import importlib.resources
import inspect
import json
import os
import re
import shutil
import sys
import textwrap
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand
from typer.exceptions import Abort, TyperException

from igcam_cli import __version__
from igcam_cli.errors import IgcamError, console, print_error
from igcam_cli.options import check, comma_list
from igcam_cli.registry import Registry
from igcam_cli.steps import STEPS, Step

LISTS = {tuple[float, ...]: float, tuple[str, ...]: str}  # shown as comma-separated text
KINDS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "path": Path,
                          "list": str}
METAVARS = {"int": "N", "float": "X", "str": "TEXT", "path": "PATH", "list": "A,B,..."}
OWN = "Options"  # the --help panel of a command's own options
HELP_FILE = "help.json"  # every command's options as data: --help without importing the step


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option, as the parser reads it and ``--help`` shows it.

    Plain data, made from a config field (:func:`_specs`): stored in ``help.json`` it lets
    ``igcam COMMAND --help`` and ``igcam explain`` answer without importing the step, whose
    module imports torch (seconds and most of a GB)."""

    name: str  # the Python name its value is passed under
    decls: tuple[str, ...]  # ("--flip/--no-flip",), ("--run", "-r")
    help: str  # the whole text; --help shows its first sentence
    panel: str
    kind: str  # a key of KINDS
    default: Any  # None for none; lists as their comma-separated text
    required: bool
    choices: tuple[str, ...] | None
    min: float | None
    max: float | None

    def names(self) -> list[str]:
        """Every name the option answers to: its option strings (``--x``, ``--no-x``, ``-x``)
        and its Python name."""
        return [*(name for decl in self.decls for name in decl.split("/")), self.name]

    def parameter(self) -> inspect.Parameter:
        """The Typer parameter of this option."""
        kind: Any = Literal[self.choices] if self.choices else KINDS[self.kind]
        if self.default is None and not self.required:
            kind = kind | None
        info = typer.Option(*self.decls, help=first_sentence(self.help), min=self.min,
                            max=self.max, show_default=self.default is not None,
                            rich_help_panel=self.panel,
                            metavar=None if self.choices else METAVARS.get(self.kind))
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY,
                                 default=... if self.required else self.default,
                                 annotation=Annotated[kind, info])


def first_sentence(text: str) -> str:
    """What ``--help`` shows of an option's help: up to the first full stop that ends a
    sentence (``e.g.`` and ``0.5`` do not), so each option stays a line or two at 80 columns."""
    match = re.search(r"(?<=[^.]\.)(?<!e\.g\.)(?<!i\.e\.)(?<!etc\.)(?<!vs\.)\s", text)
    return text[:match.start()] if match else text


def _kind(hint: Any) -> str:
    """The KINDS key of a field's type (``Path | None`` -> ``path``, a list -> ``str``)."""
    if hint in LISTS:
        return "list"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return next(key for key, kind in KINDS.items() if kind is hint)


def _specs(cls: type, prefix: str = "", panel: str = OWN) -> list[OptionSpec]:
    """The options of ``cls``: one per :func:`option` field, nested dataclasses flattened
    (their options named with the nesting's prefix, shown in its panel)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("nested"):
            found += _specs(hints[f.name], prefix + meta["prefix"], meta["panel"] or panel)
            continue
        if "help" not in meta:
            continue
        stem = prefix + f.name.replace("_", "-")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None  # a required option
        if hints[f.name] in LISTS and default is not None:
            default = ",".join(map(str, default))
        elif isinstance(default, Path):
            default = str(default)
        kind = _kind(hints[f.name])
        decls = [meta["flag"] or (f"--{stem}/--no-{stem}" if kind == "bool" else f"--{stem}")]
        if meta["short"]:
            decls.append(meta["short"])
        found.append(OptionSpec(
            stem.replace("-", "_"), tuple(decls), meta["help"], meta["panel"] or panel, kind,
            default, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            meta["choices"], meta["min"], meta["max"]))
    return found


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """The config ``cls`` from parsed option values (keys as :func:`_specs` named them)."""
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

    def owned(self) -> list[tuple[str, list[OptionSpec]]]:
        """(owner, its options) for each part, each part's in a panel of its own; the owner
        names it in collision errors."""
        registry = self.registry
        return [(f"{registry.what} {name!r}",
                 _specs(part.Options, registry.option_prefix(name), f"{registry.what} {name}"))
                for name, part in registry.items()]

    def specs(self) -> list[OptionSpec]:
        """The options of every part, in registration order."""
        return [spec for _, specs in self.owned() for spec in specs]

    def finish(self, config: Any, values: dict[str, Any]) -> Any:
        """``config`` with every part's options parsed and checked (those of parts not chosen
        too: a NaN is a mistake whichever part it was meant for)."""
        registry = self.registry
        parts = {name: _build(part.Options, values, registry.option_prefix(name))
                 for name, part in registry.items()}
        for name, options in parts.items():
            check(options, registry.option_prefix(name))
        return dataclasses.replace(config, **{self.into: parts})



def _unique(command: str, owned: list[tuple[str, list[OptionSpec]]]) -> list[OptionSpec]:
    """The parameters of every owner, after checking that no name is declared twice: a part
    whose prefixed option equals a step's (a method ``max`` with a field ``side`` against
    ``--max-side``) is an error naming both owners, not a traceback from the parser."""
    seen: dict[str, str] = {}
    for owner, specs in owned:
        for spec in specs:
            for name in dict.fromkeys(spec.names()):
                if name in seen:
                    raise IgcamError(f"igcam {command}: option {name} is declared by both "
                                     f"{seen[name]} and {owner}; rename one of them")
                seen[name] = owner
    return [spec for _, specs in owned for spec in specs]


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

    def loaded(self) -> bool:
        """Whether the step's module or a registry it reads is imported in this process (a
        part added at run time, as tests do, is then in the options only when built live)."""
        modules = [self.step.target.split(":")[0], *(r.module for r in self.registries)]
        return any(module in sys.modules for module in modules)

    def specs(self, name: str) -> list[OptionSpec]:
        """Every option of ``igcam NAME``: the config's, then each registry's parts', checked
        for names declared twice (imports the step)."""
        config, _ = self.step.load()
        return _unique(name, [(f"igcam {name}'s own options", _specs(config)),
                              *(o for r in self.registries for o in r.owned())])

    def register(self, app: typer.Typer, name: str, specs: list[OptionSpec]) -> None:
        """Add ``igcam NAME`` with options ``specs`` to ``app``: parse them into the config,
        call the step (whose module is imported only then, when ``specs`` came stored)."""
        registries = self.registries

        def run_step(**values: Any) -> None:
            config, step = self.step.load()
            built = _build(config, values)
            check(built)  # bounds, choices and NaN for every command, before any work
            for registry in registries:
                built = registry.finish(built, values)
            step(built)

        run_step.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [spec.parameter() for spec in specs])
        app.command(name, help=self.help, cls=PanelledCommand,
                    epilog=f"Each option's whole text: igcam explain {name} [--OPTION]")(run_step)


class PanelledCommand(TyperCommand):
    """A command whose ``--help`` lists its options as plain text in one section per panel
    (its own options, data, device and workers, each method's or refiner's): plain text wraps
    at the terminal's width and never cuts a word, where a table of five columns at 80
    columns cut option names and help alike."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panels.setdefault(getattr(param, "rich_help_panel", None) or OWN,
                                  []).append(record)
        for title, rows in panels.items():
            with formatter.section(title):
                formatter.write_dl(rows)


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


def all_specs() -> dict[str, list[OptionSpec]]:
    """Every command's options, built from the configs (imports every step)."""
    return {name: command.specs(name) for name, command in COMMANDS.items()}


def stored_specs() -> dict[str, list[OptionSpec]]:
    """The options ``help.json`` holds (empty when it is missing or unreadable: then every
    command is built from its config)."""
    try:
        text = importlib.resources.files("igcam_cli").joinpath(HELP_FILE).read_text("utf-8")
        return {name: [OptionSpec(**{**spec, "decls": tuple(spec["decls"]),
                                     "choices": spec["choices"] and tuple(spec["choices"])})
                       for spec in specs]
                for name, specs in json.loads(text).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def write_help_file() -> Path:
    """Write ``help.json`` next to this module from the configs; a test checks it is current."""
    path = Path(__file__).with_name(HELP_FILE)
    document = {name: [dataclasses.asdict(spec) for spec in specs]
                for name, specs in all_specs().items()}
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def _options_of(name: str, fast: bool) -> list[OptionSpec]:
    """``igcam NAME``'s options: from ``help.json`` when ``fast`` (answering --help or
    explain) and nothing of the step is imported yet, else from its config."""
    command = COMMANDS[name]
    stored = stored_specs().get(name) if fast and not command.loaded() else None
    return stored if stored is not None else command.specs(name)


def explain(
        command: Annotated[str, typer.Argument(help="The command, e.g. cam.")],
        option: Annotated[str | None, typer.Argument(
            help="One of its options, e.g. --scales (default: all of them).")] = None,
) -> None:
    """Print the whole help of every option of ``igcam COMMAND`` (or of ``--OPTION`` alone),
    wrapped to the terminal: what --help shortens to a sentence."""
    if option is not None and not option.startswith("-"):
        option = "--" + option
    if command not in COMMANDS:
        raise IgcamError(f"explain: no command {command!r}; choose from {', '.join(COMMANDS)}")
    specs = _options_of(command, fast=True)
    if option is not None:
        specs = [spec for spec in specs if option in spec.names()]
        if not specs:
            raise IgcamError(f"explain: igcam {command} has no option {option!r} (see "
                             f"`igcam {command} --help`)")
    width = min(shutil.get_terminal_size().columns, 100)
    for spec in specs:
        facts = [spec.panel]
        if spec.required:
            facts.append("required")
        elif spec.kind == "bool":
            facts.append("default " + spec.decls[0].split("/")[not spec.default])
        elif spec.default is not None:
            facts.append(f"default {spec.default}")
        if spec.choices:
            facts.append("one of " + ", ".join(spec.choices))
        print(f"{', '.join(spec.decls)}  ({'; '.join(facts)})")  # the answer: on stdout
        print(textwrap.fill(spec.help, width, initial_indent="    ", subsequent_indent="    "))


def build_app(argv: Sequence[str]) -> typer.Typer:
    """The app with the command that ``argv`` runs; only the list of commands for anything else.

    A step's module imports torch, which takes seconds: ``igcam --help``, ``--version``, a
    mistyped command and ``igcam COMMAND --help`` (from ``help.json``) should not wait for
    it. A new app each time, so that a second :func:`main` in one process (the tests) does not
    find the first one's command.
    """
    app = typer.Typer(
        name="igcam", no_args_is_help=True, pretty_exceptions_enable=False,
        rich_markup_mode=None,
        help="Pixel-level pseudo-masks from image-level labels (weakly supervised "
             "segmentation). Steps read and write artifacts in a run directory: train-cls -> "
             "cam -> refine -> eval; `igcam run` chains them and `igcam demo` shows them on "
             "generated data.")
    app.callback()(_main)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    if wanted in COMMANDS:
        specs = _options_of(wanted, fast="--help" in argv)
        COMMANDS[wanted].register(app, wanted, specs)
        return app
    if wanted == "explain":  # its OPTION argument looks like an option: take it as text
        app.command("explain", help=EXPLAIN,
                    context_settings={"ignore_unknown_options": True})(explain)
        return app
    for name, entry in [*COMMANDS.items(), ("explain", None)]:  # names and help only
        text = EXPLAIN if entry is None else entry.help
        app.command(name, help=text, short_help=first_sentence(text))(lambda: None)
    return app


EXPLAIN = ("Every option of a command in full (--help shows each one's first sentence). "
           "igcam explain cam, or igcam explain cam --scales for one.")


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
        if error.filename is None:
            print_error(reason)
            return 2
        path = Path(os.fsdecode(error.filename))
        if error.errno == errno.ENOSPC:  # how much room there is, where it ran out
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists()))
                reason += f" ({free.free / 2**20:.0f} MB free of {free.total / 2**30:.1f} GB)"
        print_error(f"{path}: {reason}")
        return 2
    except (KeyboardInterrupt, Abort):
        code = INTERRUPTED
    if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code rather than raising it
        console.print("interrupted: finished files are kept; rerun the same command to resume")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # python -m igcam_cli.cli: rewrite help.json after changing options
    print(write_help_file())
