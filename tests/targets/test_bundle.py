"""`bundle --target tensorrt`: contents, trtexec lines, hashes; and `build --from` on a bundle."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from qsched_export.cli import app
from qsched_export.targets.bundle import BUILD_SCRIPT, README, TRTEXEC_FLAGS, make_bundle
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


def _trtexec_calls(script_text: str) -> list[list[str]]:
    """The argv of each trtexec call, as sh would split it (the lines are shell-quoted)."""
    return [shlex.split(line)[1:] for line in script_text.splitlines() if line.startswith('"${TRTEXEC}"')]


def test_build_engine_sh_has_the_trtexec_lines(bundle):
    lines = (bundle / BUILD_SCRIPT).read_text().splitlines()
    assert lines[0] == "#!/bin/sh" and "set -eu" in lines
    assert _trtexec_calls("\n".join(lines)) == [
        [f"--onnx={g}.onnx", f"--saveEngine={g}.engine", "--stronglyTyped", "--memPoolSize=workspace:1024",
         "--builderOptimizationLevel=4", "--timingCacheFile=tensorrt.timing-cache", "--skipInference"]
        for g in ("text_encoder", "denoise", "vae_decoder")]
    assert any("11.x" in line and "no-op" in line for line in lines)
    assert any("/usr/src/tensorrt/bin/trtexec" in line for line in lines)


# What TensorRT 10.3's trtexec accepts for each flag we pass (NVIDIA/TensorRT tag v10.3.0,
# samples/common/sampleOptions.cpp, cited in bundle.py): a flag outside this table, or a value
# of the wrong form, fails here before it fails on a Jetson.
TRTEXEC_10_3 = {
    "--onnx": r"[^=]+\.onnx",
    "--saveEngine": r"[^=]+",
    "--stronglyTyped": None,  # a switch: "--stronglyTyped=..." is not its form
    "--memPoolSize": r"workspace:[0-9]+",  # MiB without a suffix
    "--builderOptimizationLevel": r"[0-5]",
    "--timingCacheFile": r"[^=]+",
    "--skipInference": None,
}


def test_trtexec_flags_are_those_tensorrt_10_3_documents(bundle):
    import re

    calls = _trtexec_calls((bundle / BUILD_SCRIPT).read_text())
    assert len(calls) == 3
    for argv in calls:
        names = [arg.split("=", 1)[0] for arg in argv]
        assert sorted(names) == sorted(TRTEXEC_FLAGS) and len(set(names)) == len(names)
        for arg in argv:
            name, _, value = arg.partition("=")
            assert name in TRTEXEC_10_3, f"{name} is not a TensorRT 10.3 trtexec flag we checked"
            form = TRTEXEC_10_3[name]
            assert (value == "") if form is None else re.fullmatch(form, value), f"{arg}: not the form trtexec 10.3 parses"


def test_build_engine_sh_is_shellcheck_clean(bundle):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not on PATH (apt-get install shellcheck): build_engine.sh was not linted")
    # --shell=sh: the script is POSIX sh (JetPack's /bin/sh is dash); default checks, severity style.
    result = subprocess.run([shellcheck, "--shell=sh", "--severity=style", str(bundle / BUILD_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_engine_sh_runs_trtexec_for_each_graph(bundle, tmp_path):
    """Runs the script under /bin/sh with a stand-in trtexec that records its arguments."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$CALLS"\n')
    fake.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake), "CALLS": str(tmp_path / "calls.txt")}
    result = subprocess.run(["/bin/sh", str(copy / BUILD_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    recorded = (tmp_path / "calls.txt").read_text().splitlines()
    assert recorded == [" ".join(argv) for argv in _trtexec_calls((bundle / BUILD_SCRIPT).read_text())]


def test_build_engine_sh_without_trtexec_is_a_one_line_error(bundle, tmp_path):
    env = {**os.environ, "TRTEXEC": str(tmp_path / "no-such-trtexec")}
    result = subprocess.run(["/bin/sh", str(bundle / BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"build_engine.sh: error: trtexec not found at {tmp_path / 'no-such-trtexec'}; "
                                                  "set TRTEXEC=/path/to/trtexec (JetPack installs it in /usr/src/tensorrt/bin)"]


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


def test_bundle_steps_below_one_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["bundle", "--steps", "0", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "steps must be >= 1, got 0" in result.output
    assert not (tmp_path / "b").exists()
