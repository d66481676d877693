"""One way to register a part: CAM methods, refiners, training stages, dataset formats, backbones.

A :class:`Registry` maps names to parts in registration order (the order help and errors list
them in). ``REG.register(part)`` adds a part under its ``name`` (or the name given), and refuses
a name taken twice; ``REG[name]`` of an unknown name is a one-line :class:`IgcamError` naming
the valid choices. ``REG[name] = part`` is ``register`` too, so that a test can add a part for
its own duration with ``monkeypatch.setitem``.

Parts that are classes run in a :class:`PartChain` (``a+b`` on the command line), which owns
their lifecycle: built with their context and checked options, ``setup()`` called exactly once
in the process that runs them (a ``--workers`` process gets the chain as it was built, and sets
it up there), never by the part itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, ClassVar, Generic, TypeVar

from igcam_cli.errors import IgcamError
from igcam_cli.options import NoOptions, check

T = TypeVar("T")


class UnknownPart(IgcamError, KeyError):
    """A name no part of a registry has; a ``KeyError`` too, so that mappings behave."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(MutableMapping[str, T], Generic[T]):
    """The parts of one kind by name, in registration order.

    ``what`` names the kind in messages ("CAM method"). ``prefixed``: the command line offers a
    part's options as ``--<name>-<field>``; without it, under their field names (training
    stages, whose ``--consistency-weight`` and ``--rcm-weight`` predate the prefixes).
    """

    def __init__(self, what: str, parts: Iterable[T] = (), *, prefixed: bool = True) -> None:
        self.what, self.prefixed = what, prefixed
        self._parts: dict[str, T] = {}
        for part in parts:
            self.register(part)

    def register(self, part: T, name: str | None = None) -> T:
        """Add ``part`` under ``name`` (default ``part.name``); returns it, so that it also
        decorates a class."""
        name = part.name if name is None else name  # type: ignore[attr-defined]
        if name in self._parts:
            raise IgcamError(f"{self.what} {name!r} is registered twice: {self._parts[name]!r} "
                             f"and {part!r}")
        self._parts[name] = part
        return part

    def option_prefix(self, name: str) -> str:
        """How the options of part ``name`` start on the command line (``lpcam-``, or '')."""
        return f"{name}-" if self.prefixed else ""

    def needs(self, names: Iterable[str]) -> list[str]:
        """The steps that the parts ``names`` need to have run first, in order, once each."""
        return list(dict.fromkeys(step for name in names
                                  for step in getattr(self[name], "needs", ())))

    def __getitem__(self, name: str) -> T:
        try:
            return self._parts[name]
        except KeyError:
            raise UnknownPart(f"unknown {self.what} {name!r}; choose from "
                              f"{', '.join(self._parts)}") from None

    def __setitem__(self, name: str, part: T) -> None:
        self.register(part, name)

    def __delitem__(self, name: str) -> None:
        del self._parts[name]

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._parts)})"


class Part:
    """What a part that runs in a chain is: a ``name``, an ``Options`` dataclass, a set-up.

    A subclass's docstring is its help. ``needs`` names the steps that must have run before it
    (``("train-aff",)`` for the random walk), which ``igcam run`` runs first.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: Any, options: Any = None) -> None:
        self.context = context
        self.options = self.Options() if options is None else options
        check(self.options, f"{self.name}-")

    def setup(self) -> None:  # noqa: B027 - most parts need no set-up
        """Work done once, in the process that runs the part, before its first call, with
        ``self.context`` and ``self.options`` set (read folders, load a network); raise
        ``IgcamError`` for what cannot work. The chain calls it; a part never does."""


P = TypeVar("P", bound=Part)


class PartChain(Generic[P]):
    """The parts ``names`` of ``registry`` in order, each built with its options (from
    ``options`` by name; defaults when missing) and set up once per process on first use."""

    def __init__(self, registry: Mapping[str, type[P]], names: list[str], context: Any,
                 options: Mapping[str, Any]) -> None:
        self.context = context
        self.stages: list[P] = [registry[n](context, options.get(n)) for n in names]
        self._set_up = False

    def setup(self) -> None:
        """Set every stage up, unless this process already has: the chain's only call of
        ``Part.setup``."""
        if not self._set_up:
            for stage in self.stages:
                stage.setup()
            self._set_up = True

    def __getstate__(self) -> dict[str, Any]:
        """The chain as built: what ``setup()`` made (networks) is made again where it runs."""
        return {"context": self.context,
                "stages": [(type(stage), stage.options) for stage in self.stages]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.context = state["context"]
        self.stages = [kind(self.context, options) for kind, options in state["stages"]]
        self._set_up = False
