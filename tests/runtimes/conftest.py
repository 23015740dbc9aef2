"""Fixtures of the runtimes room: a hand-made artifact in the exporter's contract."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hand_artifact import make_artifact  # noqa: E402


@pytest.fixture(scope="session")
def hand_artifact(tmp_path_factory) -> Path:
    """Read-only for tests: copy it before changing anything."""
    return make_artifact(tmp_path_factory.mktemp("hand") / "artifact")
