"""User-facing errors, and the console they (and every progress bar and warning) go to.

Anything a user can cause (bad paths, bad files, bad options) raises :class:`IgcamError`;
the CLI prints its message on one line and exits with status 2 instead of a traceback.
Messages go to stderr, so stdout stays clean for pipelines; soft wrapping keeps long paths on
one line in logs. The console reads no markup: messages carry user text (paths, file and class
names such as ``[red]`` or ``a[/]b``) that must print as it is, so styles are given as
:class:`rich.text.Text` spans (:func:`print_error`, :func:`print_warning`), never as markup
inside a message.
"""

from rich.console import Console
from rich.text import Text

console = Console(stderr=True, soft_wrap=True, markup=False)


def print_error(message: str) -> None:
    """``error: <message>``, the one line a user mistake ends with."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def print_warning(message: object, indent: str = "") -> None:
    """``warning: <message>``: a per-image problem, counted and kept in the manifest."""
    console.print(Text.assemble(indent, ("warning:", "yellow"), " ", str(message)))


class IgcamError(Exception):
    """An error whose message is complete and meant for the user."""


class ImageProblem(IgcamError):
    """A problem confined to one image: warned about and counted unless ``--strict``."""
