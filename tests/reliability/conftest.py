"""Fixtures of the reliability room: the checkout under test, a CLI runner on it, and the
artifacts the cases start from (built once per session from a tiny model made in code).

The checkout under test is this one, or the one `QSCHED_MATRIX_CHECKOUT` names (to run the
matrix against another branch, e.g. main before a fix). Its packages come first on every child's
path through PYTHONPATH, and the `cli` fixture asserts that the CLI imports them from there, not
from an installed copy. The working folder of each command is the case's own scratch folder, so a
command that writes where it should not (`--out .`) can only touch that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "runtimes"))  # hand_artifact

from cli_runner import STEPS, THIS_CHECKOUT, Cli  # noqa: E402


@pytest.fixture(scope="session")
def checkout() -> Path:
    return Path(os.environ.get("QSCHED_MATRIX_CHECKOUT") or THIS_CHECKOUT).resolve()


@pytest.fixture(scope="session")
def cli(checkout, tmp_path_factory) -> Cli:
    runner = Cli(checkout, tmp_path_factory.mktemp("cli"))
    probe = subprocess.run([sys.executable, "-c", "import qsched_export, runtimes; print(qsched_export.__file__); print(runtimes.__file__)"],
                           cwd=runner.root, env=runner.env, capture_output=True, text=True, check=True)
    for imported in probe.stdout.split():
        assert Path(imported).resolve().is_relative_to(checkout), f"the CLI imports {imported}, not the checkout {checkout}"
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def shared(cli, tmp_path_factory) -> Path:
    """Read-only inputs every case may use: `model` (a tiny LCM pipeline), `exported` (its fp32
    export, 2 steps), `good` (that export built for onnxruntime), `judge` (a tiny open_clip model),
    `prompts.txt` and `qsched.json` (coefficients for w4a16 only)."""
    root = tmp_path_factory.mktemp("shared")
    cli.call("qsched_export.testing:save_tiny_sd", root / "model")
    cli.call("qsched_export.testing:save_tiny_clip", root / "judge")
    (root / "prompts.txt").write_text("a red circle\ntwo small blue squares\n")
    ones = [1.0] * STEPS
    (root / "qsched.json").write_text(json.dumps({
        "format": "qsched", "version": 1, "model": str(root / "model"), "family": "lcm", "steps": STEPS, "guidance_scale": 2.0,
        "schemes": {"w4a16": {"latent_coeff": ones, "output_coeff": ones}}}))
    for argv in (["export", "--model", root / "model", "--bits", "32", "--steps", STEPS, "--out", root / "exported"],
                 ["build", "--from", root / "exported", "--target", "onnxruntime", "--bits", "32", "--out", root / "good"]):
        result = cli(*argv, cwd=root)
        assert result.exit == 0, result.stderr
    return root
