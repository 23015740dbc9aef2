"""Shared tiny pipeline, tiny open_clip judge and prompt file for the calibration tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # calibration_cases, onnx_refs

from calibration_cases import PROMPTS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from qsched_export.testing import save_tiny_clip, save_tiny_sd

    root = tmp_path_factory.mktemp("calib")
    save_tiny_sd(root / "sd")
    save_tiny_clip(root / "judge")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root
