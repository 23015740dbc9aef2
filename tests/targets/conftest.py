"""Fixtures of the targets room: the runtimes room's hand-made artifact, and a tiny pipeline
with a qsched.json for end-to-end builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "runtimes"))

from hand_artifact import make_artifact  # noqa: E402


@pytest.fixture(scope="session")
def hand_artifact(tmp_path_factory) -> Path:
    """Read-only for tests: copy it before changing anything."""
    return make_artifact(tmp_path_factory.mktemp("hand") / "artifact")


@pytest.fixture(scope="session")
def tiny_with_qsched(tiny_pipeline_factory, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Euler-ancestral pipeline (stochastic: the denoise graph takes noise) and its qsched.json."""
    from tiny_qsched import write_qsched

    model = tiny_pipeline_factory("EulerAncestralDiscreteScheduler")
    return model, write_qsched(model, tmp_path_factory.mktemp("qsched") / "qsched.json")
