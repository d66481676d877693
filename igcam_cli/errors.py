"""User-facing errors.

Anything a user can cause (bad paths, bad files, bad options) raises :class:`IgcamError`;
the CLI prints its message on one line and exits with status 2 instead of a traceback.
"""


class IgcamError(Exception):
    """An error whose message is complete and meant for the user."""


class ImageProblem(IgcamError):
    """A problem confined to one image: warned about and counted unless ``--strict``."""
