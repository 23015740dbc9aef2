"""`qsched-export check` and `run` on the hand-made artifact: table, verdict line, exit codes."""

from __future__ import annotations

import shutil

import numpy as np
from typer.testing import CliRunner

from qsched_export.cli import app
from runtimes.manifest import load_manifest, write_manifest

runner = CliRunner()


def test_check_passes_with_table_and_verdict(hand_artifact, tmp_path):
    art = shutil.copytree(hand_artifact, tmp_path / "a")
    result = runner.invoke(app, ["check", "--artifact", str(art)])
    assert result.exit_code == 0, result.output
    assert "latents   fakequant" in result.output and "PASSED | onnxruntime (CPUExecutionProvider)" in result.output.splitlines()


def test_check_failure_exits_1_and_names_the_failure(hand_artifact, tmp_path):
    art = shutil.copytree(hand_artifact, tmp_path / "a")
    golden = dict(np.load(art / "golden.npz"))
    golden["fp32/final_latents"] = golden["fp32/final_latents"] + 1.0
    np.savez(art / "golden.npz", **golden)
    write_manifest(art, load_manifest(art, verify=False))
    result = runner.invoke(app, ["check", "--artifact", str(art)])
    assert result.exit_code == 1
    assert "final_latents vs fp32: cosine" in result.output and "FAILED | onnxruntime (CPUExecutionProvider)" in result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: parity failed (the FAIL rows above) (see {art / 'parity.json'}; re-export the artifact, or recalibrate its activation ranges)"]


def test_unknown_provider_and_missing_artifact_are_one_line(hand_artifact, tmp_path):
    result = runner.invoke(app, ["check", "--artifact", str(hand_artifact), "--provider", "coreml"])
    assert result.exit_code == 1 and "unknown provider 'coreml'" in result.output
    result = runner.invoke(app, ["check", "--artifact", str(hand_artifact), "--provider", "cuda"])
    assert result.exit_code == 1 and "CUDAExecutionProvider is not available" in result.output
    result = runner.invoke(app, ["run", "--artifact", str(tmp_path / "nope"), "--prompt", "x"])
    assert result.exit_code == 1 and "has no manifest.json" in result.output and "Traceback" not in result.output
