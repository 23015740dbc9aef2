"""Errors a user can fix. The CLI prints them as one line and exits 1, without a traceback."""


class QSchedError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)
