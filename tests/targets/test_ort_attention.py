"""The onnxruntime target's float attention fusion (`BuildOptions.fuse_attention`,
targets/ort_attention.py) on a tiny exported SD pipeline: every float attention becomes one
MultiHeadAttention, the built graph computes what the exported one does, int8 attention is left
to its integer kernels, and a default build fuses nothing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qsched_export.targets import BuildOptions, build
from qsched_export.errors import QSchedError
from qsched_export.targets.onnxruntime import fuse_attention_graph, optimize_graph
from qsched_export.targets.ort_attention import FUSED_OP
from runtimes.parity import check_artifact

STEPS, GUIDANCE = 2, 2.0  # CFG against the baked negative prompt, as the build tests export


@pytest.fixture(scope="module")
def exported(tiny_pipeline_factory, tmp_path_factory):
    """`make(scheme) -> artifact folder` of a tiny Euler-a SD pipeline, exported once per scheme;
    one qsched.json observed with int8 attention serves all (w8a8 ignores the q/k/v ranges)."""
    from qsched_export.export import ExportConfig, export_artifact
    from qsched_export.quant import scheme_for
    from qsched_export.testing import write_observed_qsched

    model = tiny_pipeline_factory("EulerAncestralDiscreteScheduler")
    int8_attention = scheme_for("onnxruntime", 8, scheme="w8a8", int8_attention=True)
    qsched = write_observed_qsched(model, tmp_path_factory.mktemp("q") / "qsched.json", (int8_attention,), steps=STEPS, guidance=GUIDANCE)
    cache = {}

    def make(scheme: str):
        if scheme not in cache:
            out = tmp_path_factory.mktemp(scheme.replace("+", "-")) / "artifact"
            config = ExportConfig(out=out, model=str(model), scheme=int8_attention if scheme == "w8a8+attn" else scheme, coeffs=qsched,
                                  steps=STEPS, guidance_scale=GUIDANCE)
            cache[scheme] = export_artifact(config)
        return cache[scheme]
    return make


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _denoise(path, golden: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: golden[i.name] for i in session.get_inputs()})


@pytest.mark.parametrize("scheme,atol", [("fp32", 1e-4), ("w8a8", 1e-3)])
def test_fusion_replaces_every_float_attention_of_the_denoiser(exported, scheme, atol, tmp_path):
    """The rewrite itself, on float and int8 graphs: every Softmax of the denoiser becomes one
    MultiHeadAttention and the graph computes what the exported one does."""
    artifact = exported(scheme)
    attentions = _ops(artifact / "denoise.onnx")["Softmax"]
    assert attentions > 0
    assert optimize_graph(artifact / "denoise.onnx", tmp_path / "denoise.onnx", "extended", ["CPUExecutionProvider"], fuse=True) == attentions
    built = _ops(tmp_path / "denoise.onnx")
    assert built[FUSED_OP] == attentions and built["Softmax"] == 0
    # The built graph against the exported one, run as exported (separate MatMul/Softmax kernels).
    golden = dict(np.load(artifact / "golden.npz"))
    for fused, unfused in zip(_denoise(tmp_path / "denoise.onnx", golden), _denoise(artifact / "denoise.onnx", golden), strict=True):
        np.testing.assert_allclose(fused, unfused, rtol=0, atol=atol)


def test_onnxruntime_build_fuses_a_quantized_artifact_and_passes_parity(exported, tmp_path):
    """A w8a8 build with fuse_attention passes `check`; CLIP's causal (masked) attention stays as
    exported; a default build fuses nothing; a float build is refused before anything is written."""
    artifact = exported("w8a8")
    out = build(artifact, BuildOptions("onnxruntime", tmp_path / "ort", fuse_attention=True))
    assert check_artifact(out).passed
    assert _ops(out / "text_encoder.onnx")[FUSED_OP] == 0 and _ops(out / "text_encoder.onnx")["Softmax"] > 0
    assert _ops(build(artifact, BuildOptions("onnxruntime", tmp_path / "default")) / "denoise.onnx")[FUSED_OP] == 0
    with pytest.raises(QSchedError, match="--fuse-attention is for quantized builds, not fp32"):
        build(exported("fp32"), BuildOptions("onnxruntime", tmp_path / "float", fuse_attention=True))
    assert not (tmp_path / "float").exists()


def test_int8_attention_is_not_fused(exported, tmp_path):
    """Q/DQ on q, k, v and the probabilities: ORT's QLinearMatMul runs them, MultiHeadAttention would not."""
    artifact = exported("w8a8+attn")
    out = build(artifact, BuildOptions("onnxruntime", tmp_path / "ort", fuse_attention=True))
    built = _ops(out / "denoise.onnx")
    assert built[FUSED_OP] == 0 and built["Softmax"] == _ops(artifact / "denoise.onnx")["Softmax"] > 0
    assert built["QLinearMatMul"] > 0


def test_fusion_keeps_a_head_reshape_read_elsewhere(exported, tmp_path):
    """The q heads made a graph output: their Transpose stays, the attention still fuses, and both
    outputs match the graph without the fusion."""
    model = onnx.load(str(exported("fp32") / "denoise.onnx"))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    producer = {out: n for n in model.graph.node for out in n.output}
    q_heads = producer[producer[softmax.input[0]].input[0]].input[0]  # Softmax <- MatMul <- Mul(q heads, scale)
    assert producer[q_heads].op_type == "Transpose"
    model.graph.output.append(onnx.helper.make_tensor_value_info(q_heads, onnx.TensorProto.FLOAT, None))
    onnx.save(model, tmp_path / "denoise.onnx")
    assert fuse_attention_graph(tmp_path / "denoise.onnx", tmp_path / "fused.onnx", ["CPUExecutionProvider"]) == (_ops(tmp_path / "denoise.onnx")["Softmax"], False)
    golden = dict(np.load(exported("fp32") / "golden.npz"))
    fused, unfused = _denoise(tmp_path / "fused.onnx", golden), _denoise(tmp_path / "denoise.onnx", golden)
    for a, b in zip(fused, unfused, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_cli_build_fuse_attention_records_the_count_and_refuses_other_targets(exported, tmp_path):
    """`build --from ... --fuse-attention`: PASSED, the manifest records how many attentions were
    fused; on another target the option is a one-line error and nothing is written."""
    import json

    from typer.testing import CliRunner

    from qsched_export.cli import app

    artifact = exported("w8a8")
    runner = CliRunner()
    result = runner.invoke(app, ["build", "--from", str(artifact), "--target", "onnxruntime", "--bits", "8", "--fuse-attention",
                                 "--out", str(tmp_path / "ort")])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output
    tools = json.loads((tmp_path / "ort" / "manifest.json").read_text())["tools"]
    # The count covers every graph (the denoiser's attentions all fuse; the others' where they match).
    assert int(tools["fused_attentions"]) == sum(_ops(graph)[FUSED_OP] for graph in (tmp_path / "ort").glob("*.onnx"))
    assert _ops(tmp_path / "ort" / "denoise.onnx")[FUSED_OP] == _ops(artifact / "denoise.onnx")["Softmax"] > 0
    refused = runner.invoke(app, ["build", "--from", str(artifact), "--target", "ort-mobile", "--bits", "8", "--fuse-attention",
                                  "--out", str(tmp_path / "mobile")])
    assert refused.exit_code == 1
    assert "--fuse-attention is an onnxruntime build option, not one for ort-mobile" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "mobile").exists()
