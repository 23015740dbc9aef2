"""Shared tiny pipeline, tiny open_clip judge and prompt file for the calibration tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_judge, onnx_refs

PROMPTS = ["two small red circles on a blue background", "a green square"]


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from tiny_judge import save_tiny_clip
    from tiny_models import save_tiny_sd

    root = tmp_path_factory.mktemp("calib")
    save_tiny_sd(root / "sd")
    save_tiny_clip(root / "judge")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root
