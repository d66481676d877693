"""User-facing errors, and the console they (and every progress bar and warning) go to.

Anything a user can cause (bad paths, bad files, bad options) raises :class:`IgcamError`;
the CLI prints its message on one line and exits with status 2 instead of a traceback.
Messages go to stderr, so stdout stays clean for pipelines; soft wrapping keeps long paths on
one line in logs.
"""

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


class IgcamError(Exception):
    """An error whose message is complete and meant for the user."""


class ImageProblem(IgcamError):
    """A problem confined to one image: warned about and counted unless ``--strict``."""
