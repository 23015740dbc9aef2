"""End to end on a tiny pipeline: `build` (export -> target -> check -> sample.png), `run`,
`bundle` then `build --from`, and the one-line errors of bad flags."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from qsched_export.cli import app

runner = CliRunner()


def _invoke(*argv: str):
    return runner.invoke(app, list(argv))


def _latents_parity(artifact, reference: str) -> dict:
    """parity.json's final-latent comparison against `reference` (fp32 or fakequant)."""
    parity = json.loads((artifact / "parity.json").read_text())
    assert parity["passed"]
    return next(c for c in parity["comparisons"] if c["output"] == "final_latents" and c["reference"] == reference)


def test_build_onnxruntime_fp32_checks_and_writes_sample(tiny_with_qsched, tmp_path):
    model, qsched = tiny_with_qsched
    out = tmp_path / "fp32"
    result = _invoke("build", "--target", "onnxruntime", "--bits", "32", "--model", str(model), "--coeffs", str(qsched), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "scheme fp32" in result.output and "PASSED | onnxruntime (CPUExecutionProvider)" in result.output
    assert _latents_parity(out, "fp32")["max_abs"] <= 1e-4
    with Image.open(out / "sample.png") as img:
        assert img.size == (16, 16)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["guidance_scale"] == 2.0  # like the calibrated schemes in the qsched.json

    png = tmp_path / "run.png"
    result = _invoke("run", "--artifact", str(out), "--prompt", "a blue square", "--out", str(png), "--seed", "3")
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 0


def test_bundle_int4_then_build_from_it(tiny_with_qsched, tmp_path):
    model, qsched = tiny_with_qsched
    bundle = tmp_path / "bundle"
    result = _invoke("bundle", "--target", "tensorrt", "--bits", "4", "--model", str(model), "--coeffs", str(qsched), "--out", str(bundle))
    assert result.exit_code == 0, result.output
    assert "scheme w4a16" in result.output and (bundle / "build_engine.sh").is_file()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["scheme"]["name"] == "w4a16" and manifest["target_form"] == "qdq"

    # The very graphs TensorRT would get, run on ONNX Runtime CPU against the PyTorch fake-quant reference.
    result = _invoke("build", "--from", str(bundle), "--target", "onnxruntime", "--bits", "4", "--out", str(tmp_path / "ort4"))
    assert result.exit_code == 0, result.output
    # The gate (runtimes/parity.py) holds step 1 within twice the quantization noise; the final latent
    # may drift further on CPUs whose float kernels flip other int8 roundings (AVX512/AMX).
    assert _latents_parity(tmp_path / "ort4", "fakequant")["cosine"] >= 0.9


def test_build_onnxruntime_int8_uses_the_calibrated_scheme(tiny_with_qsched, tmp_path):
    """The README's main job, on a tiny model: w8a8 from the qsched.json, ORT's fused integer kernels."""
    model, qsched = tiny_with_qsched
    out = tmp_path / "int8"
    result = _invoke("build", "--target", "onnxruntime", "--bits", "8", "--model", str(model), "--coeffs", str(qsched), "--out", str(out))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "scheme w8a8 (Linear int8 weights, static int8 activations; Conv int8 weights, static int8 activations)" in text and "PASSED | onnxruntime" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scheme"]["name"] == "w8a8" and manifest["coefficients"]["latent_coeff"] == [0.98, 1.0]
    assert _latents_parity(out, "fakequant")["cosine"] >= 0.9 and (out / "sample.png").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--target", "coreml", "--bits", "8"], "unknown target 'coreml'"),
    (["--target", "onnxruntime", "--bits", "3"], "--bits must be 4, 8, 16 or 32, got 3"),
    (["--target", "onnxruntime", "--bits", "4", "--opset", "20"], "needs opset 21"),
    (["--target", "onnxruntime", "--text-weights", "int4"], "text weights must be one of float, int8, got 'int4'"),
    (["--target", "ort-mobile", "--text-weights", "int8"], "ort-mobile cannot keep int8 text-encoder weights"),
    (["--target", "tensorrt", "--bits", "8", "--fuse-attention"], "--fuse-attention is an onnxruntime build option, not one for tensorrt"),
    (["--target", "onnxruntime", "--bits", "32", "--fuse-attention"], "--fuse-attention is for quantized builds, not fp32"),
])
def test_bad_flags_are_one_line_errors(argv, message, tiny_with_qsched, tmp_path):
    model, qsched = tiny_with_qsched
    out = tmp_path / "out"
    result = _invoke("build", *argv, "--model", str(model), "--coeffs", str(qsched), "--out", str(out))
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in result.output.replace("\n", " ") and "Traceback" not in result.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_default_folders_name_the_options_that_change_the_graphs():
    from qsched_export import outputs
    from runtimes.schemes import scheme_for

    assert scheme_for("onnxruntime", 8).folder_tag == "w8a8"
    assert scheme_for("onnxruntime", 8, int8_attention=True, text_weights="int8").folder_tag == "w8a8-int8attn-int8text"
    assert scheme_for("tensorrt", 4, text_weights="int8").folder_tag == "w4a16-int8text"
    plain, int8_text = (outputs.build_dir(None, "onnxruntime", scheme_for("onnxruntime", 8, text_weights=t).folder_tag) for t in (None, "int8"))
    assert plain.name == "shapes-sd-onnxruntime-w8a8" and int8_text.name == "shapes-sd-onnxruntime-w8a8-int8text"
