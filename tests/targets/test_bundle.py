"""`bundle --target tensorrt`: contents, trtexec lines, hashes; and `build --from` on a bundle."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from qsched_export.cli import app
from qsched_export.targets.bundle import BUILD_SCRIPT, README, make_bundle
from runtimes.manifest import load_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(hand_artifact, tmp_path_factory):
    return make_bundle(hand_artifact, tmp_path_factory.mktemp("b") / "bundle", bits=8, workspace_mib=1024, builder_optimization_level=4)


def test_bundle_is_self_contained_and_hashed(bundle):
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert names == {"manifest.json", "golden.npz", "tokenizer/tokenizer.json", "text_encoder.onnx", "denoise.onnx", "vae_decoder.onnx",
                     BUILD_SCRIPT, README}
    manifest = load_manifest(bundle)  # every sha256 checked
    assert BUILD_SCRIPT in manifest.files and README in manifest.files
    assert os.access(bundle / BUILD_SCRIPT, os.X_OK)
    readme = (bundle / README).read_text()
    assert "qsched-export build --from . --target tensorrt --bits 8 --workspace-mib 1024" in readme and "JetPack" in readme


def test_build_engine_sh_has_the_trtexec_lines(bundle):
    lines = (bundle / BUILD_SCRIPT).read_text().splitlines()
    assert lines[0] == "#!/bin/sh" and "set -eu" in lines
    calls = [line for line in lines if line.startswith('"$TRTEXEC"')]
    assert calls == [
        f'"$TRTEXEC" --onnx={g}.onnx --saveEngine={g}.engine --stronglyTyped --memPoolSize=workspace:1024 '
        f"--builderOptimizationLevel=4 --timingCacheFile=tensorrt.timing-cache --skipInference"
        for g in ("text_encoder", "denoise", "vae_decoder")]
    assert any("11.x" in line and "no-op" in line for line in lines)
    assert any("/usr/src/tensorrt/bin/trtexec" in line for line in lines)


def test_tampered_bundle_is_a_one_line_error(bundle, tmp_path):
    import shutil

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    with open(copy / "denoise.onnx", "ab") as f:
        f.write(b"\0")
    result = runner.invoke(app, ["build", "--from", str(copy), "--target", "onnxruntime", "--bits", "8", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "sha256 mismatch: denoise.onnx" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bundle_bits_must_match(bundle, tmp_path):
    result = runner.invoke(app, ["build", "--from", str(bundle), "--target", "onnxruntime", "--bits", "4", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "holds scheme w8a8 (--bits 8), not --bits 4" in result.output


def test_bundle_refuses_other_targets(hand_artifact, tmp_path):
    result = runner.invoke(app, ["bundle", "--from", str(hand_artifact), "--target", "onnxruntime", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "bundle is for --target tensorrt" in result.output


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="tests the missing-TensorRT branch; tensorrt is installed")
def test_build_from_bundle_without_tensorrt_points_to_the_device(bundle, tmp_path):
    result = runner.invoke(app, ["build", "--from", str(bundle), "--target", "tensorrt", "--bits", "8", "--out", str(tmp_path / "trt")])
    assert result.exit_code == 1 and "TensorRT is not installed" in result.output and "bundle" in result.output
    assert not (tmp_path / "trt").exists()


def test_build_from_with_no_check_writes_no_parity(hand_artifact, tmp_path):
    result = runner.invoke(app, ["build", "--from", str(hand_artifact), "--target", "onnxruntime", "--bits", "8", "--out", str(tmp_path / "o"), "--no-check"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "sample.png").is_file() and not (tmp_path / "o" / "parity.json").exists() and "PASSED" not in result.output
