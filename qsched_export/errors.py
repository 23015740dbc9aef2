"""Errors a user can fix. The CLI prints them as one line and exits 1, without a traceback."""

from runtimes.errors import UserError


class QSchedError(UserError):
    """A problem with the user's input or environment on the torch side, with the fix in the message."""
