"""SDXL and FLUX end to end on tiny pipelines built in code: every scheme exported, built for ONNX
Runtime and ORT-mobile, bundled for TensorRT (its graphs pass the contract checker for 10.3 and
10.15), checked (PASSED), and run torch-free to a PNG."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from qsched_export.cli import app

runner = CliRunner()
# case -> (backbone, components, guidance): SDXL-Turbo-like (Euler-a, trailing, CFG with zeros as
# the empty negative prompt) and FLUX.1-schnell-like (flow-match Euler, no guidance input).
CASES = {"sdxl": ("sdxl", {"scheduler_cls": "EulerAncestralDiscreteScheduler"}, 2.0), "flux": ("flux", {}, 0.0)}


@pytest.fixture(scope="module")
def calibrated_case(tiny_model_factory, tmp_path_factory):
    from tiny_qsched import write_qsched

    cache = {}

    def make(case: str):
        if case not in cache:
            backbone, components, guidance = CASES[case]
            model = tiny_model_factory(backbone, **components)
            cache[case] = model, write_qsched(model, tmp_path_factory.mktemp(f"q-{case}") / "qsched.json",
                                              schemes=("fp16", "w8a8", "w4a16", "w4a8"), guidance=guidance)
        return cache[case]
    return make


def _ok(*argv: str):
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("target,bits", [("onnxruntime", 32), ("onnxruntime", 16), ("onnxruntime", 8), ("onnxruntime", 4), ("ort-mobile", 8)])
def test_build_checks_and_runs(calibrated_case, case, target, bits, tmp_path):
    model, qsched = calibrated_case(case)
    out = tmp_path / "built"
    text = _ok("build", "--target", target, "--bits", str(bits), "--model", str(model), "--coeffs", str(qsched), "--out", str(out))
    assert "PASSED | onnxruntime" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["backbone"] == CASES[case][0] and manifest["guidance_scale"] == CASES[case][2]
    assert len(manifest["tokenizers"]) == 2  # SDXL: two CLIP tokenizers; FLUX: CLIP and T5
    parity = json.loads((out / "parity.json").read_text())
    first = {c["reference"]: c for c in parity["comparisons"] if c["output"] == "first_latents"}
    assert first["fp32"]["cosine"] > 0.99 and (bits == 32 or first["fakequant"]["cosine"] >= 0.9995)
    png = tmp_path / "run.png"
    _ok("run", "--artifact", str(out), "--prompt", "a blue square", "--out", str(png), "--seed", "3")
    with Image.open(png) as img:
        assert img.size == (16, 16)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bits,scheme", [(8, "w8a8"), (4, "w4a16")])
def test_tensorrt_bundle_passes_the_contract_and_builds_from(calibrated_case, case, bits, scheme, tmp_path):
    model, qsched = calibrated_case(case)
    bundle = tmp_path / "bundle"
    # bundle runs the TensorRT contract checker (profiles 10.3 and 10.15) before it writes anything.
    text = _ok("bundle", "--target", "tensorrt", "--bits", str(bits), "--model", str(model), "--coeffs", str(qsched), "--out", str(bundle))
    assert f"scheme {scheme}" in text and (bundle / "build_engine.sh").is_file()
    script = (bundle / "build_engine.sh").read_text()
    assert all(f"--onnx={g}.onnx" in script for g in ("text_encoder", "denoise", "vae_decoder"))
    text = _ok("build", "--from", str(bundle), "--target", "onnxruntime", "--bits", str(bits), "--out", str(tmp_path / "ort"))
    assert "PASSED" in text


@pytest.mark.parametrize("bits", [32, 8])
def test_int8_text_weights_build_and_check(calibrated_case, bits, tmp_path):
    """`--text-weights int8` on FLUX (CLIP + T5): built for ONNX Runtime and PASSED against its own
    references (at 32 bits the FP32 bar, 1e-4 on the latents: the text graph computes exactly its reference)."""
    import onnx

    model, qsched = calibrated_case("flux")
    out = tmp_path / "built"
    text = _ok("build", "--target", "onnxruntime", "--bits", str(bits), "--model", str(model), "--coeffs", str(qsched), "--out", str(out),
               "--text-weights", "int8")
    assert "text encoders int8 weights" in text and "PASSED | onnxruntime" in text
    assert json.loads((out / "manifest.json").read_text())["scheme"]["text_weights"] == "int8"
    # ONNX Runtime fused the weight DequantizeLinear -> MatMul into MatMulNBits: with float32 activations
    # (accuracy level 1, runtimes.runners.ort_session_options), not its default int8 ones.
    fused = [n for n in onnx.load(str(out / "text_encoder.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert fused and all(onnx.helper.get_attribute_value(a) == 1 for n in fused for a in n.attribute if a.name == "accuracy_level")


def test_int8_text_weights_bundle_passes_the_contract_and_builds_from(calibrated_case, tmp_path):
    model, qsched = calibrated_case("flux")
    bundle = tmp_path / "bundle"
    text = _ok("bundle", "--target", "tensorrt", "--bits", "8", "--model", str(model), "--coeffs", str(qsched), "--out", str(bundle),
               "--text-weights", "int8")  # the contract checker (10.3 and 10.15) ran on every graph first
    assert "text encoders int8 weights" in text and "(int8 text-encoder weights)" in (bundle / "README.md").read_text()
    text = _ok("build", "--from", str(bundle), "--target", "onnxruntime", "--bits", "8", "--out", str(tmp_path / "ort"))
    assert "PASSED" in text
    # Any --text-weights with --from is refused, float too: the artifact's own (int8 here) are built.
    for value in ("int8", "float"):
        result = runner.invoke(app, ["build", "--from", str(bundle), "--target", "onnxruntime", "--bits", "8", "--text-weights", value,
                                     "--out", str(tmp_path / "again")])
        assert result.exit_code == 1 and "drop --text-weights with --from" in " ".join(result.output.split())
