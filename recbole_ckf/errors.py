"""User-facing errors.

A :class:`CKFError` is a user's mistake (a bad file, key or value), never a bug: the CLI prints its message
as one line and exits with status 2, without a traceback. Messages name the file, field or key and say what
was expected.
"""


class CKFError(Exception):
    """A user's mistake, reported as one clear line."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))  # always one line
