"""The new int8 forms through the real exporter on the tiny TCD pipeline: int8 attention,
w4a8s (int4 stored, int8 kernels) and TensorRT's placement, each against its own fake-quant
reference with the parity gate `check` uses, and the kernels ONNX Runtime fuses them into."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_cases import FAMILIES, QUANT_FAMILY, STEPS
from helpers import write_calibration

from qsched_export.export.onnx_io import op_counts
from runtimes.manifest import load_manifest
from runtimes.parity import compare_outputs


@pytest.fixture(scope="module")
def ranged(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny TCD pipeline and a qsched.json whose w8a8 and w4a8s entries hold ranges observed
    with int8 attention (so they include the q/k/v ranges; the other schemes ignore those)."""
    from qsched_export.qsched_file import read_qsched, write_qsched
    from qsched_export.quant import scheme_for

    backbone, components, gamma, guidance = FAMILIES[QUANT_FAMILY]
    model = tiny_model_factory(backbone, **components)
    path = write_calibration(model, tmp_path_factory.mktemp("q-int8") / "qsched.json", steps=STEPS, guidance=guidance, gamma=gamma,
                             schemes=(scheme_for("onnxruntime", 8, int8_attention=True),))
    qfile = read_qsched(path)
    write_qsched(path, replace(qfile, schemes={name: qfile.schemes["w8a8"] for name in ("w8a8", "w4a8s")}))
    return model, path


def _export(ranged, scheme, tmp_path) -> Path:
    from qsched_export.export import ExportConfig, export_artifact

    model, qsched = ranged
    return export_artifact(ExportConfig(out=tmp_path / "artifact", model=str(model), scheme=scheme, coeffs=qsched, steps=STEPS,
                                        gamma=FAMILIES[QUANT_FAMILY][2]))


def _run(folder: Path, tmp_path: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    golden = dict(np.load(folder / "golden.npz"))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(folder / "denoise.onnx"), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {i.name: golden[i.name] for i in session.get_inputs()})))
    return outputs, op_counts(onnx.load(str(tmp_path / "optimized.onnx")))


def _assert_gate(folder: Path, outputs: dict[str, np.ndarray]) -> None:
    """The step-1 latent within `check`'s quantized (qdq) parity gate of both references."""
    comparisons = compare_outputs({"first_latents": outputs["first_latents"]}, dict(np.load(folder / "golden.npz")), "qdq")
    assert comparisons and all(c.passed for c in comparisons), [c.failures for c in comparisons]


def test_int8_attention_exports_and_fuses(ranged, tmp_path):
    from qsched_export.quant import scheme_for

    scheme = scheme_for("onnxruntime", 8, int8_attention=True, weight_range="7bit")
    folder = _export(ranged, scheme, tmp_path)
    manifest = load_manifest(folder)
    assert manifest.scheme["int8_attention"] is True and len(manifest.quantization["int8_attention"]) == 8
    outputs, ops = _run(folder, tmp_path)
    # Every product runs in int8: the 8 attentions' q·kᵀ and p·v per step, and every Linear (2-D
    # ones too), as MatMulIntegerToFloat, or QLinearMatMul where a quantizer follows (ORT moves a
    # QuantizeLinear up through Reshape/Transpose: to_k/to_v feed the attention's k/v quantizers).
    # time_emb_proj's input is a constant (the baked timestep's embedding; ORT folds its
    # quantizer into an int8 initializer), so it stays a small MatMul of two constants.
    linears = [name for name in manifest.quantization["quantized"] if "conv" not in name and "proj_in" not in name and "proj_out" not in name]
    time_emb = [name for name in linears if name.endswith("time_emb_proj")]
    assert not {"FusedMatMul", "Gemm"} & set(ops) and ops.get("MatMul", 0) == len(time_emb) * STEPS, ops
    assert ops.get("MatMulIntegerToFloat", 0) + ops.get("QLinearMatMul", 0) == (8 * 2 + len(linears) - len(time_emb)) * STEPS, ops
    _assert_gate(folder, outputs)


def test_w4a8s_exports_int4_and_runs_int8(ranged, tmp_path):
    from qsched_export.quant import scheme_for

    scheme = scheme_for("onnxruntime", 4, scheme="w4a8s", weight_range="7bit")
    folder = _export(ranged, scheme, tmp_path)
    model = onnx.load(str(folder / "denoise.onnx"))
    packed = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]  # int4 nibbles, one buffer per layer
    assert len(packed) == len(load_manifest(folder).quantization["quantized"]) > 0 and model.opset_import[0].version == 20
    outputs, ops = _run(folder, tmp_path)
    assert ops.get("QLinearConv") and ops.get("MatMulIntegerToFloat") and not {"Round", "Clip", "BitShift"} & set(ops), ops
    _assert_gate(folder, outputs)


def test_tensorrt_placement_passes_the_contract(ranged, tmp_path):
    """What `bundle --target tensorrt` gets: inputs-only Q/DQ, float bias, full-range weights; the
    contract checker accepts it, and ONNX Runtime runs it as the fake-quant computes it."""
    from qsched_export.quant import scheme_for
    from qsched_export.targets.tensorrt_contract import check_model

    scheme = scheme_for("tensorrt", 8)
    folder = _export(ranged, scheme, tmp_path)
    assert check_model(folder / "denoise.onnx") == []
    outputs, _ = _run(folder, tmp_path)
    _assert_gate(folder, outputs)


def test_runners_open_w4a8s_through_the_layer_by_layer_fold(ranged, tmp_path):
    """`runtimes.int4.ort_source` hands ONNX Runtime a folded copy of a w4a8s graph (the same int8
    weights ORT's own folding makes, so the same outputs bit for bit) and any other graph as it is."""
    from qsched_export.quant import scheme_for
    from runtimes.int4 import int4_chains, ort_source
    from runtimes.runners import OrtRunner

    folder = _export(ranged, scheme_for("onnxruntime", 4, scheme="w4a8s", weight_range="7bit"), tmp_path)
    with ort_source(folder / "denoise.onnx") as source:
        assert source != str(folder / "denoise.onnx") and not int4_chains(onnx.load(source))
    with ort_source(folder / "vae_decoder.onnx") as source:
        assert source == str(folder / "vae_decoder.onnx")
    golden = dict(np.load(folder / "golden.npz"))
    runner = OrtRunner(folder / "denoise.onnx")
    ours = runner.run({n: golden[n] for n in runner.input_names})["first_latents"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(str(folder / "denoise.onnx"), options, providers=["CPUExecutionProvider"])  # ORT folds by itself
    theirs = plain.run(["first_latents"], {i.name: golden[i.name] for i in plain.get_inputs()})[0]
    assert np.array_equal(ours, theirs)
