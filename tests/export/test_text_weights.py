"""`--text-weights int8` through the real exporter: every Linear of every text encoder becomes an
int8 initializer (per output channel) -> DequantizeLinear -> MatMul with float activations, on
the tiny FLUX (CLIP + T5), SDXL (two CLIPs) and SD (one CLIP) pipelines. What it saves, the graph
against its PyTorch reference (golden data) and the float encoders, the manifest, and TensorRT's
contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from export_cases import FAMILIES, STEPS

from runtimes.manifest import load_manifest

CASES = ("flux", "sdxl_turbo", "tcd")  # FLUX: CLIP + T5 in one text graph; SDXL: two CLIPs; SD: one


@pytest.fixture(scope="module")
def exported(calibrated, tmp_path_factory):
    """`exported(case, text_weights) -> artifact`: fp32 denoiser (parity's strictest bar), float or int8 text weights."""
    from qsched_export.export import ExportConfig, export_artifact
    from qsched_export.quant import scheme_for

    cache: dict[tuple[str, str], Path] = {}

    def make(case: str, text_weights: str) -> Path:
        if (case, text_weights) not in cache:
            model, qsched = calibrated(case)
            out = tmp_path_factory.mktemp(f"text-{case}-{text_weights}") / "artifact"
            scheme = scheme_for("onnxruntime", 32, text_weights=text_weights)
            cache[case, text_weights] = export_artifact(ExportConfig(out=out, model=str(model), scheme=scheme, coeffs=qsched, steps=STEPS,
                                                                     gamma=FAMILIES[case][2]))
        return cache[case, text_weights]

    return make


def _text_graph(artifact: Path) -> onnx.ModelProto:
    return onnx.load(str(artifact / "text_encoder.onnx"))


def _weight_bytes(graph: onnx.ModelProto) -> int:
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.graph.initializer)


def _run_text(artifact: Path) -> dict[str, np.ndarray]:
    """The text graph on the golden ids, through the runtime's own ONNX Runtime session."""
    from runtimes.runners import OrtRunner

    golden = dict(np.load(artifact / "golden.npz"))
    runner = OrtRunner(artifact / "text_encoder.onnx")
    return runner.run({name: golden[name] for name in runner.input_names})


@pytest.mark.parametrize("case", CASES)
def test_int8_weights_are_a_quarter_of_the_float_linear_bytes(exported, case):
    graph = _text_graph(exported(case, "int8"))
    inits = {t.name: t for t in graph.graph.initializer}
    dequantize = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    consumers = {i: n.op_type for n in graph.graph.node for i in n.input}
    int8 = [inits[n.input[0]] for n in dequantize]
    # One DQ per Linear the graph computes (SDXL's first CLIP ends at its penultimate layer, so the
    # trace drops the last one), per output channel along MatMul's N, into MatMul; activations stay float.
    exported_layers = load_manifest(exported(case, "int8")).quantization["text_encoders"]["exported_layers"]
    assert 0 < len(dequantize) <= exported_layers and (case == "sdxl_turbo" or len(dequantize) == exported_layers)
    assert all(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in int8)
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == 1 and consumers[n.output[0]] == "MatMul" for n in dequantize)
    assert not any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    float_bytes = sum(4 * int(np.prod(t.dims)) for t in int8)
    int8_bytes = sum(int(np.prod(t.dims)) + 4 * int(np.prod(inits[n.input[1]].dims)) for t, n in zip(int8, dequantize))
    # 1 byte a weight plus a float32 scale per output channel: 0.25 + 1/K of the float bytes (K = 16-64 here).
    assert 0.25 < int8_bytes / float_bytes <= 0.32, int8_bytes / float_bytes
    # The graph's weights shrink by exactly that: no float copy of a Linear weight is left (the
    # file's node overhead, ~60% of these tiny graphs, is nothing at full size).
    assert _weight_bytes(_text_graph(exported(case, "float"))) - _weight_bytes(graph) == float_bytes - int8_bytes


@pytest.mark.parametrize("case", CASES)
def test_text_graph_matches_its_weight_quantized_reference(exported, case):
    int8, plain = exported(case, "int8"), exported(case, "float")
    golden, golden_float = dict(np.load(int8 / "golden.npz")), dict(np.load(plain / "golden.npz"))
    outputs = _run_text(int8)
    assert set(outputs) == set(load_manifest(int8).graph("text_encoder").outputs)
    for name, value in outputs.items():
        reference, float_reference = golden[name], golden_float[name]
        scale = float(np.abs(reference).max())
        # The golden conditioning is the PyTorch text module with the dequantized weights: float rounding apart.
        assert np.abs(value - reference).max() <= 1e-5 * max(scale, 1.0), name
        # Against the float encoders: close, but really quantized.
        cosine = float(value.ravel() @ float_reference.ravel() / (np.linalg.norm(value) * np.linalg.norm(float_reference)))
        assert cosine >= 0.999 and np.abs(value - float_reference).max() > 1e-4, (name, cosine)


@pytest.mark.parametrize("case", CASES)
def test_manifest_records_the_text_weights(exported, calibrated, case):
    from torch import nn

    from qsched_export.pipeline import open_backbone

    int8, plain = load_manifest(exported(case, "int8")), load_manifest(exported(case, "float"))
    assert int8.scheme["text_weights"] == "int8" and plain.scheme["text_weights"] == "float"
    report = int8.quantization["text_encoders"]
    linears = {name: m for name, m in open_backbone(str(calibrated(case)[0])).text_module().named_modules() if isinstance(m, nn.Linear)}
    assert report["scheme"] == "w8a16" and sorted(report["quantized"]) == sorted(linears) and report["skipped"] == []
    # Each Linear: 4 bytes a weight -> 1, plus a float32 scale per output channel.
    assert report["bytes_before"] - report["bytes_after"] == sum(3 * m.weight.numel() - 4 * m.out_features for m in linears.values())
    # The default exports the encoders as they are: no text layer quantized, no DequantizeLinear.
    assert plain.quantization["text_encoders"]["quantized"] == [] and plain.quantization["text_encoders"]["exported_layers"] == 0
    assert not any(n.op_type == "DequantizeLinear" for n in _text_graph(exported(case, "float")).graph.node)


@pytest.mark.parametrize("case", CASES)
def test_int8_text_graph_passes_the_tensorrt_contract(exported, case):
    from qsched_export.targets.tensorrt_contract import DEFAULT_PROFILES, check_model

    assert DEFAULT_PROFILES == ("10.3", "10.15")
    assert check_model(exported(case, "int8") / "text_encoder.onnx", DEFAULT_PROFILES) == []
