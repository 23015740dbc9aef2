"""The export contract of a fake-quant layer, checked in ONNX Runtime: the graph the exporter
writes for one layer computes what the layer computes in "quant" mode, unfused (ORT runs the
Q/DQ nodes as written) and fused (ORT's int8 kernels), for each Q/DQ placement, and ORT fuses
it into the kernels the placement is designed for."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from qsched_export.export import onnx_io
from qsched_export.export.qdq import swap_for_export
from qsched_export.quant import get_scheme, observe_ranges, quantize_model


def _export_layer(scheme, conv: bool, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(24, 16, 3, padding=1) if conv else torch.nn.Linear(96, 32))
    x = torch.randn(2, 24, 6, 6) if conv else torch.randn(4, 10, 96)
    quantize_model(net, scheme)
    with observe_ranges(net), torch.no_grad():
        net(x)
    layer = net[0]
    with torch.no_grad():
        ours = net(x).numpy()
    swap_for_export(net, scheme.target_form)
    path = tmp_path / "layer.onnx"
    model = onnx_io.export_module(net, (x,), path, ["x"], ["y"], onnx_io.default_opset(scheme))
    packed = onnx_io.pack_int4_weights(model)
    onnx_io.save_model(model, path)
    onnx_io.check_model(path)
    return layer, x.numpy(), ours, path, packed


def _run(path, x, optimize: bool, tmp_path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    y = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return y, onnx_io.op_counts(onnx.load(str(tmp_path / "optimized.onnx")))


# scheme, placement, conv -> the kernels ORT must fuse the layer into (extended level: portable)
CASES = [
    ("w8a8", "onnxruntime", True, {"QLinearConv"}),
    ("w8a8", "onnxruntime", False, {"MatMulIntegerToFloat"}),
    ("w4a8s", "onnxruntime", True, {"QLinearConv"}),
    ("w4a8s", "onnxruntime", False, {"MatMulIntegerToFloat"}),
    ("w8a8", "tensorrt", True, set()),  # inputs only: TensorRT fuses the rest, ORT runs Q/DQ + float Conv
    ("w8a8", "tensorrt", False, {"MatMulIntegerToFloat"}),
]


@pytest.mark.parametrize("name,placement,conv,kernels", CASES)
@pytest.mark.parametrize("weight_range", ["full", "7bit"])
def test_layer_equals_its_graph(name, placement, conv, kernels, weight_range, tmp_path):
    scheme = get_scheme(name).with_placement(placement).with_weight_range(weight_range)
    layer, x, ours, path, packed = _export_layer(scheme, conv, tmp_path)
    exact, _ = _run(path, x, optimize=False, tmp_path=tmp_path)
    fused, ops = _run(path, x, optimize=True, tmp_path=tmp_path)
    assert kernels <= set(ops), ops
    assert packed == 0  # no INT4 type: w4a8s packs its own nibbles into uint8
    qmax = 63 if weight_range == "7bit" else 127
    weights = layer.requantized_weight() if scheme.conv.requant_bits else layer.quantized_weight()
    assert int(weights.abs().max()) == qmax
    # The unfused graph is the fake-quant's arithmetic (float op order aside). A quantized output
    # can flip one step where ORT's integer kernel rounds a float tie differently; a float output
    # differs by float rounding only.
    step = float(layer.output_scale) if scheme.conv.quantize_outputs and conv else 1e-5 * float(np.abs(ours).max())
    for ref in (exact, fused):
        diff = np.abs(ours - ref)
        assert diff.max() <= step * 1.0001, (diff.max(), step)
        assert (diff > 1e-5 * np.abs(ours).max()).mean() < 0.01


def test_w4a8s_file_holds_int4_and_ort_folds_it_to_int8(tmp_path):
    """The point of w4a8s: int4's bytes on disk (nibbles in a uint8 buffer, opset 20), int8 kernels
    at run time (ORT constant-folds the unpacking and requantization when the session loads; no
    float weight is left in the file or the optimized graph)."""
    scheme = get_scheme("w4a8s")
    layer, x, _, path, _ = _export_layer(scheme, True, tmp_path)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 20
    packed = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert len(packed) == 1 and len(packed[0].raw_data) == 16 * 24 * 9 // 2
    from qsched_export.export.qdq import unpack_nibbles

    assert torch.equal(unpack_nibbles(torch.from_numpy(onnx.numpy_helper.to_array(packed[0])), (16, 24, 3, 3)), layer.quantized_weight().float())
    weight_size = 16 * 24 * 9
    assert max(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT) < weight_size // 8
    _, ops = _run(path, x, optimize=True, tmp_path=tmp_path)
    assert ops.get("QLinearConv") == 1 and not {"Cast", "Round", "Clip", "Div", "BitShift"} & set(ops), ops


def test_runtime_folds_int4_layer_by_layer_once_per_weight(tmp_path):
    """runtimes.int4 computes what ONNX Runtime's folding would (the int8 weights of the fake-quant
    layer, the same outputs), once per weight where the unrolled steps call a layer repeatedly."""
    from runtimes.int4 import fold_int4_weights, int4_chains

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    net = torch.nn.Sequential(conv)
    x = torch.randn(1, 8, 6, 6)
    quantize_model(net, get_scheme("w4a8s"))
    with observe_ranges(net), torch.no_grad():
        net(net(x))
    q8 = net[0].requantized_weight().numpy()

    class Twice(torch.nn.Module):  # one weight, two calls: as the unrolled sampler calls the UNet
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(self.inner(x))

    model_twice = Twice(net)
    with torch.no_grad():
        ours = model_twice(x).numpy()
    swap_for_export(net, "qdq")
    path = tmp_path / "twice.onnx"
    model = onnx_io.export_module(model_twice, (x,), path, ["x"], ["y"], 20)
    onnx_io.save_model(model, path)
    assert len(int4_chains(model)) == 2
    unfolded, _ = _run(path, x.numpy(), optimize=False, tmp_path=tmp_path)
    assert fold_int4_weights(model) == 1 and int4_chains(model) == []
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8) == 1 and np.array_equal(onnx.numpy_helper.to_array(int8[0]), q8)
    assert not any(t.data_type == onnx.TensorProto.UINT8 for t in model.graph.initializer)  # the nibbles are gone
    onnx.save(model, path)
    folded, ops = _run(path, x.numpy(), optimize=True, tmp_path=tmp_path)
    exact, _ = _run(path, x.numpy(), optimize=False, tmp_path=tmp_path)
    assert np.array_equal(exact, unfolded) and ops.get("QLinearConv") and not {"Cast", "BitShift", "Round"} & set(ops), ops
    assert np.abs(folded - ours).max() <= 2 * float(net[0].output_scale) * 1.0001
