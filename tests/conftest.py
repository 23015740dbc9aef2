"""Shared fixtures: tiny diffusers pipelines built in code and saved with save_pretrained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny_sd  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny LCM StableDiffusionPipeline folder (epsilon prediction)."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-lcm") / "pipe")


@pytest.fixture(scope="session")
def tiny_pipeline_factory(tmp_path_factory):
    """Save (once per configuration) and return a tiny pipeline folder for a scheduler/prediction type."""
    cache: dict[tuple, Path] = {}

    def make(scheduler_cls: str = "LCMScheduler", prediction_type: str = "epsilon", time_cond_proj_dim: int | None = None) -> Path:
        key = (scheduler_cls, prediction_type, time_cond_proj_dim)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{scheduler_cls}") / "pipe"
            cache[key] = save_tiny_sd(folder, scheduler_cls=scheduler_cls, prediction_type=prediction_type, time_cond_proj_dim=time_cond_proj_dim)
        return cache[key]

    return make
