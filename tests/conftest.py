"""Shared fixtures: tiny diffusers pipelines built in code and saved with save_pretrained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qsched_export.testing import save_tiny_flux, save_tiny_sd, save_tiny_sdxl

sys.path.insert(0, str(Path(__file__).parent))  # onnx_models: every room's hand-built ONNX models

SAVERS = {"sd": save_tiny_sd, "sdxl": save_tiny_sdxl, "flux": save_tiny_flux}


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny LCM StableDiffusionPipeline folder (epsilon prediction)."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-lcm") / "pipe")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """`make(backbone, **components) -> folder`: a tiny pipeline of a backbone family (sd, sdxl,
    flux), saved once per configuration."""
    cache: dict[tuple, Path] = {}

    def make(backbone: str = "sd", **kwargs) -> Path:
        key = (backbone, tuple(sorted(kwargs.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{backbone}") / "pipe"
            cache[key] = SAVERS[backbone](folder, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_pipeline_factory(tiny_model_factory):
    """A tiny SD pipeline folder for a scheduler/prediction type (and LCM guidance embedding)."""

    def make(scheduler_cls: str = "LCMScheduler", prediction_type: str = "epsilon", time_cond_proj_dim: int | None = None) -> Path:
        return tiny_model_factory("sd", scheduler_cls=scheduler_cls, prediction_type=prediction_type, time_cond_proj_dim=time_cond_proj_dim)

    return make
