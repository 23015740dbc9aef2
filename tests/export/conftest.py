"""Export fixtures: tiny pipelines with a calibrated qsched.json, and artifacts exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import SCHEMES, write_calibration  # noqa: E402

# family id -> (scheduler class, time_cond_proj_dim, gamma, guidance)
FAMILIES = {
    "lcm": ("LCMScheduler", None, None, 2.0),
    "lcm_cond": ("LCMScheduler", 8, None, 4.0),  # LCM guidance embedding, no CFG
    "tcd": ("TCDScheduler", None, 0.3, 2.0),  # gamma > 0: a noise input
    "tcd_det": ("TCDScheduler", None, 0.0, 2.0),  # gamma = 0: deterministic, no noise input
    "euler_a": ("EulerAncestralDiscreteScheduler", None, None, 2.0),
}
STEPS = 2


# Quantized schemes are exercised on this family (CFG and a noise input); the others export fp32.
QUANT_FAMILY = "tcd"


@pytest.fixture(scope="session")
def calibrated(tiny_pipeline_factory, tmp_path_factory):
    """`calibrated(family) -> (model_dir, qsched.json)`: fp32 coefficients, plus activation ranges
    for every scheme on `QUANT_FAMILY`."""
    cache: dict[str, tuple[Path, Path]] = {}

    def make(family: str) -> tuple[Path, Path]:
        if family not in cache:
            scheduler, cond_dim, gamma, guidance = FAMILIES[family]
            model = tiny_pipeline_factory(scheduler, "epsilon", cond_dim)
            qsched = tmp_path_factory.mktemp(f"q-{family}") / "qsched.json"
            schemes = SCHEMES if family == QUANT_FAMILY else ("fp32",)
            cache[family] = (model, write_calibration(model, qsched, steps=STEPS, guidance=guidance, gamma=gamma, schemes=schemes))
        return cache[family]

    return make


@pytest.fixture(scope="session")
def artifact(calibrated, tmp_path_factory):
    """`artifact(family, scheme, fuse=False) -> folder`, exported once per session."""
    from qsched_export.export import ExportConfig, export_artifact

    cache: dict[tuple, Path] = {}

    def make(family: str, scheme: str, fuse: bool = False) -> Path:
        key = (family, scheme, fuse)
        if key not in cache:
            model, qsched = calibrated(family)
            gamma = FAMILIES[family][2]
            out = tmp_path_factory.mktemp(f"art-{family}-{scheme}") / "artifact"
            cache[key] = export_artifact(ExportConfig(out=out, model=str(model), scheme=scheme, coeffs=qsched, steps=STEPS, gamma=gamma, fuse=fuse))
        return cache[key]

    return make
