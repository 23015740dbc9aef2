"""Export fixtures: tiny pipelines with a calibrated qsched.json, and artifacts exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from export_cases import FAMILIES, QUANT_CASES, STEPS  # noqa: E402
from helpers import SCHEMES, write_calibration  # noqa: E402


@pytest.fixture(scope="session")
def calibrated(tiny_model_factory, tmp_path_factory):
    """`calibrated(family) -> (model_dir, qsched.json)`: fp32 coefficients, plus activation ranges
    for every scheme on `QUANT_CASES`."""
    cache: dict[str, tuple[Path, Path]] = {}

    def make(family: str) -> tuple[Path, Path]:
        if family not in cache:
            backbone, components, gamma, guidance = FAMILIES[family]
            model = tiny_model_factory(backbone, **components)
            qsched = tmp_path_factory.mktemp(f"q-{family}") / "qsched.json"
            schemes = SCHEMES if family in QUANT_CASES else ("fp32",)
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
