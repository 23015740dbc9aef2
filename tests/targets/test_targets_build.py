"""The onnxruntime, ort-mobile and tensorrt targets on the hand-made INT8 artifact."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter

import onnx
import pytest

from qsched_export.errors import QSchedError
from qsched_export.targets import BuildOptions, build
from qsched_export.targets import onnxruntime as onnxruntime_target
from qsched_export.targets.ort_mobile import OPS_CONFIG, convert_command
from qsched_export.targets.tensorrt import profile_for, require_tensorrt_form
from qsched_export.targets.tensorrt_contract import ContractError
from runtimes.errors import RunnerError
from runtimes.files import OutputError
from runtimes.manifest import load_manifest
from runtimes.parity import check_artifact
from runtimes.schemes import SCHEMES

tensorrt_absent = pytest.mark.skipif("tensorrt" in sys.modules or __import__("importlib").util.find_spec("tensorrt") is not None,
                                     reason="tests the missing-TensorRT branch; this machine has the tensorrt package")


def test_onnxruntime_target_fuses_qdq_and_passes_parity(hand_artifact, tmp_path):
    out = build(hand_artifact, BuildOptions("onnxruntime", tmp_path / "ort"))
    manifest = load_manifest(out)  # hashes verified
    assert manifest.tools["onnxruntime_level"] == "extended" and manifest.graphs["denoise"].file == "denoise.onnx"
    ops = Counter(n.op_type for n in onnx.load(out / "denoise.onnx").graph.node)
    # ORT folded our Q/DQ MatMul into an integer kernel: the optimized graph is what runs.
    assert ops["MatMulIntegerToFloat"] == 1 and ops["DequantizeLinear"] == 0 and ops["MatMul"] == 0
    report = check_artifact(out)
    assert report.passed and json.loads((out / "parity.json").read_text())["passed"] is True


def test_ort_mobile_target_packages_ort_files_and_operator_config(hand_artifact, tmp_path):
    out = build(hand_artifact, BuildOptions("ort-mobile", tmp_path / "mobile"))
    names = {p.name for p in out.iterdir()}
    assert {"text_encoder.ort", "denoise.ort", "vae_decoder.ort", OPS_CONFIG, "manifest.json", "golden.npz", "tokenizer"} == names
    config = (out / OPS_CONFIG).read_text()
    assert "ai.onnx;11;Conv" in config and "# - denoise.ort" in config and str(tmp_path) not in config
    assert load_manifest(out).graphs["denoise"].file == "denoise.ort"
    assert check_artifact(out).passed  # the .ort graphs run in ONNX Runtime here


def test_ort_converter_is_an_argv_list(tmp_path):
    argv = convert_command(tmp_path / "in", tmp_path / "out", "arm")
    assert argv[0] == sys.executable and argv[1:3] == ["-m", "onnxruntime.tools.convert_onnx_models_to_ort"]
    assert argv[-4:] == ["--optimization_style", "Fixed", "--target_platform", "arm"]


def test_existing_output_is_refused_then_replaced_atomically(hand_artifact, tmp_path):
    out = tmp_path / "ort"
    build(hand_artifact, BuildOptions("onnxruntime", out))
    (out / "parity.json").write_text("from the first build")
    with pytest.raises(OutputError, match="already exists"):
        build(hand_artifact, BuildOptions("onnxruntime", out))
    build(hand_artifact, BuildOptions("onnxruntime", out, overwrite=True))
    assert not (out / "parity.json").exists() and load_manifest(out).graphs["denoise"].file == "denoise.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ort"]  # no temp or trash folders left


def test_overwrite_never_deletes_a_folder_that_is_not_an_artifact(hand_artifact, tmp_path):
    out = tmp_path / "userdata"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("four years")
    with pytest.raises(OutputError, match="not a qsched-export artifact .it holds sub, thesis.txt"):
        build(hand_artifact, BuildOptions("onnxruntime", out, overwrite=True))
    assert (out / "thesis.txt").read_text() == "four years" and sorted(p.name for p in tmp_path.iterdir()) == ["userdata"]


def test_a_failed_verify_keeps_the_previous_output(hand_artifact, tmp_path):
    out = tmp_path / "ort"
    build(hand_artifact, BuildOptions("onnxruntime", out))
    before = load_manifest(out).files
    seen = []

    def failing_check(staging):
        seen.append(sorted(p.name for p in staging.iterdir()))
        raise QSchedError("parity failed", "see parity.json")

    with pytest.raises(QSchedError, match="parity failed"):
        onnxruntime_target.build(hand_artifact, BuildOptions("onnxruntime", out, overwrite=True), verify=failing_check)
    assert "manifest.json" in seen[0]  # the check saw the complete output, in the staging folder
    assert load_manifest(out).files == before and sorted(p.name for p in tmp_path.iterdir()) == ["ort"]


@tensorrt_absent
def test_tensorrt_without_tensorrt_errors_and_writes_nothing(hand_artifact, tmp_path):
    with pytest.raises(RunnerError) as info:
        build(hand_artifact, BuildOptions("tensorrt", tmp_path / "out" / "trt"))
    assert "TensorRT is not installed" in info.value.problem
    assert "JetPack" in info.value.fix and "qsched-export bundle --target tensorrt" in info.value.fix
    assert not (tmp_path / "out").exists()


def test_tensorrt_contract_failure_never_reaches_the_builder(hand_artifact, tmp_path):
    art = shutil.copytree(hand_artifact, tmp_path / "a")
    model = onnx.load(art / "denoise.onnx")
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, art / "denoise.onnx")
    from runtimes.manifest import write_manifest

    write_manifest(art, load_manifest(art, verify=False))
    with pytest.raises(ContractError) as info:  # raised before TensorRT is even looked for
        build(art, BuildOptions("tensorrt", tmp_path / "trt"))
    assert "graph input latents" in info.value.problem and not (tmp_path / "trt").exists()


def test_one_tensorrt_import_and_engine_suffix():
    import qsched_export.targets.tensorrt as target
    import runtimes.runners as runners

    assert target.import_tensorrt is runners.import_tensorrt and target.ENGINE_SUFFIX is runners.ENGINE_SUFFIX == ".engine"


def test_matmulnbits_artifact_is_not_for_tensorrt(hand_artifact):
    from dataclasses import replace

    manifest = replace(load_manifest(hand_artifact), target_form="matmulnbits", scheme=SCHEMES["w4a8"].to_dict())
    with pytest.raises(QSchedError, match="MatMulNBits"):
        require_tensorrt_form(manifest)


@pytest.mark.parametrize("version,profile", [("10.3.0.30", ("10.3",)), ("10.7.0", ("10.3",)), ("10.15.1.29", ("10.15",)), ("11.1.0", ("10.15",))])
def test_contract_profile_of_installed_tensorrt(version, profile):
    assert profile_for(version) == profile


@pytest.mark.parametrize("kwargs,message", [({"target": "coreml"}, "unknown target"), ({"workspace_mib": 0}, "workspace"),
                                            ({"builder_optimization_level": 6}, "0-5"), ({"ort_level": "max"}, "ORT optimization level")])
def test_build_options_validate(kwargs, message, tmp_path):
    with pytest.raises(QSchedError, match=message):
        BuildOptions(**{"target": "onnxruntime", "out_dir": tmp_path, **kwargs})


@pytest.mark.parametrize("scheme,message", [("w8a16", "ort-mobile cannot keep w8a16's int8 weights weight-only"),
                                            ("w8a8", None), ("w4a8", None), ("fp32", None)])
def test_ort_mobile_refuses_int8_weight_only_linears(scheme, message):
    """The ORT-format converter runs int8 weight-only MatMuls with int8 activations: w8a16 is
    refused before anything is converted; schemes whose Linear activations are int8 already, or float
    with no int8 weights, pass."""
    from qsched_export.targets.ort_mobile import require_mobile_scheme

    if message is None:
        require_mobile_scheme(SCHEMES[scheme])
    else:
        with pytest.raises(QSchedError, match=message):
            require_mobile_scheme(SCHEMES[scheme])
