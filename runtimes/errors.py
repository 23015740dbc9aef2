"""Errors of the torch-free runtimes that a user can fix (a missing execution provider, no CUDA
device, an engine from another TensorRT version). Like `ArtifactError`, each carries the
problem and the fix, so the CLI prints one line and exits 1."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix, with the fix in the message. The base of every such error
    (`QSchedError` on the torch side too), so the CLI maps them all in one place."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)


class ArtifactError(UserError):
    """An artifact folder that cannot be used as it is (missing, tampered, unknown version, a
    manifest record without the fields this version writes). Lives here so that every module the
    manifest reads (runtimes.schemes too) can raise it; `runtimes.manifest` re-exports it."""


class RunnerError(UserError):
    """A runner that cannot start or cannot take the given inputs."""
