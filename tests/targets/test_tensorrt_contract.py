"""The TensorRT contract checker on hand-built graphs: a valid INT8 and INT4 graph pass (and run
on ONNX Runtime), and each broken rule is reported with its node and rule id."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from qdq_graphs import int4_block_matmul, int8_matmul_conv, node, set_init

from qsched_export.errors import QSchedError
from qsched_export.targets.tensorrt_contract import ContractError, check_model, require_contract


def _found(model, profiles=("10.3", "10.15")) -> set[tuple[str, str]]:
    return {(v.node, v.rule) for v in check_model(model, profiles)}


@pytest.mark.parametrize("make,feed", [(int8_matmul_conv, (1, 4, 8, 8)), (int4_block_matmul, (4, 64))])
def test_valid_graphs_pass_and_run_on_ort(make, feed):
    model = make()
    onnx.checker.check_model(model, full_check=True)
    assert check_model(model) == []
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(feed, np.float32)})[0]
    assert np.isfinite(out).all() and np.abs(out).sum() > 0


def test_nonzero_zero_point():
    model = int8_matmul_conv()
    set_init(model, "conv_w_zp", np.array([0, 0, 1, 0, 0, 0, 0, 0], np.int8))
    assert _found(model) == {("conv_w_dequant", "zero-point")}


def test_uint8_zero_point_and_missing_zero_point():
    assert ("x_quant", "uint8") in _found(int8_matmul_conv(act_zp_dtype=TensorProto.UINT8))
    model = int8_matmul_conv()
    del node(model, "r_quant").input[2]  # ONNX then quantizes to UINT8
    violations = {v.node: v for v in check_model(model)}
    assert violations["r_quant"].rule == "uint8" and "defaults to UINT8" in violations["r_quant"].message


def test_zero_point_dtype_must_match_weight():
    model = int8_matmul_conv()
    model.graph.initializer.append(helper.make_tensor("zp_i4", TensorProto.INT4, [8], [0] * 8))
    node(model, "conv_w_dequant").input[2] = "zp_i4"
    found = {(v.node, v.rule, "INT4 but conv_w_q is INT8" in v.message) for v in check_model(model)}
    assert ("conv_w_dequant", "zero-point", True) in found


def test_scale_must_be_positive_constant():
    model = int8_matmul_conv()
    set_init(model, "mm_w_scale", np.array([0.02, 0.0, 0.02, 0.02, 0.02, 0.02], np.float32))
    assert _found(model) == {("mm_w_dequant", "scale")}


def test_per_channel_on_activation():
    model = int8_matmul_conv()
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.full(64, 0.05, np.float32), "row_scale"),
                                    onnx.numpy_helper.from_array(np.zeros(64, np.int8), "row_zp")])
    for name in ("r_quant", "r_dequant"):
        n = node(model, name)
        n.input[1], n.input[2] = "row_scale", "row_zp"
        n.attribute.append(helper.make_attribute("axis", 0))
    assert {("r_quant", "per-channel"), ("r_dequant", "per-channel")} <= _found(model)


@pytest.mark.parametrize("dq,axis,scale_len", [("mm_w_dequant", 0, 8), ("conv_w_dequant", 1, 4)])
def test_wrong_per_channel_axis(dq, axis, scale_len):
    model = int8_matmul_conv()
    n = node(model, dq)
    del n.attribute[:]
    n.attribute.append(helper.make_attribute("axis", axis))
    set_init(model, n.input[1], np.full(scale_len, 0.01, np.float32))
    set_init(model, n.input[2], np.zeros(scale_len, np.int8))
    messages = [v.message for v in check_model(model) if v.node == dq and v.rule == "per-channel"]
    assert messages and "output channels on axis" in messages[0]


def test_per_channel_without_axis():
    model = int8_matmul_conv()
    del node(model, "conv_w_dequant").attribute[:]
    assert _found(model) == {("conv_w_dequant", "per-channel")}


def test_int4_on_conv_weight_is_rejected():
    model = int4_block_matmul(weight_shape=(8, 4, 4, 4), block=2, consumer="Conv")
    messages = [v.message for v in check_model(model) if v.node == "w_dequant"]
    assert any("2-D weights" in m for m in messages) and any("only on MatMul/Gemm" in m for m in messages)


def test_int4_odd_last_dim():
    assert _found(int4_block_matmul(n=15)) == {("w_dequant", "int4")}


def test_int4_needs_opset_21():
    found = [v for v in check_model(int4_block_matmul(opset=20)) if v.node == "w_dequant"]
    assert [v.rule for v in found] == ["int4"] and "opset >= 21" in found[0].message


def test_int4_block_size_must_agree_with_shapes():
    model = int4_block_matmul()
    n = node(model, "w_dequant")
    next(a for a in n.attribute if a.name == "block_size").i = 16
    assert _found(model) == {("w_dequant", "int4")}


def test_matmulnbits_is_ort_only():
    model = int8_matmul_conv()
    model.graph.node.append(helper.make_node("MatMulNBits", ["y", "mm_w_q"], ["z"], name="nbits", domain="com.microsoft", K=6, N=6, bits=4, block_size=32))
    assert ("nbits", "ort-only-op") in _found(model)


def test_dynamic_shape_names_the_tensor():
    model = int8_matmul_conv()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    assert _found(model) == {("graph input x", "static-shape")}


def test_unsupported_op_names_the_profile():
    model = int8_matmul_conv()
    model.graph.node.append(helper.make_node("MatMulInteger", ["y", "y"], ["z"], name="mmi"))
    model.graph.node.append(helper.make_node("RMSNormalization", ["y", "y"], ["z2"], name="rms"))
    violations = {v.node: v.message for v in check_model(model)}
    assert "TensorRT 10.3" in violations["mmi"] and "TensorRT 10.15" in violations["mmi"]
    assert "TensorRT 10.3" in violations["rms"] and "10.15" not in violations["rms"]


@pytest.mark.parametrize("opset,profiles,bad", [(8, ("10.3",), True), (22, ("10.3",), True), (22, ("10.15",), False), (25, ("10.15",), True)])
def test_opset_range_per_version(opset, profiles, bad):
    model = int8_matmul_conv()
    model.opset_import[0].version = opset  # restamped: the contract reads the number, nothing loads the model
    assert (("<model>", "opset") in _found(model, profiles)) is bad


def test_require_contract_raises_once_with_every_violation(tmp_path):
    model = int8_matmul_conv()
    set_init(model, "conv_w_zp", np.ones(8, np.int8))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "denoise.onnx"
    onnx.save(model, path)
    with pytest.raises(ContractError) as info:
        require_contract([path])
    assert isinstance(info.value, QSchedError) and len(info.value.violations) == 2
    assert "denoise.onnx" in info.value.problem and "conv_w_dequant" in info.value.problem and "graph input x" in info.value.problem


def test_scale_behind_identity_is_a_constant():
    # torch.onnx writes a parameter shared by several steps as Identity(initializer).
    model = int8_matmul_conv()
    model.graph.node.insert(0, helper.make_node("Identity", ["act_scale"], ["act_scale_alias"], name="alias"))
    node(model, "r_quant").input[1] = "act_scale_alias"
    assert check_model(model) == []
    node(model, "alias").op_type = "Relu"  # not constant-folded by our rule: named
    assert ("r_quant", "scale") in _found(model)


def test_output_quantizer_before_a_float_op_breaks_the_placement():
    """ONNX Runtime's placement (a quantized Conv output feeding GroupNorm-like float ops) is the
    wrong graph for TensorRT; a Q/DQ on a residual Add input is TensorRT's own recommendation."""
    model = int8_matmul_conv()
    assert check_model(model) == []  # Q/DQ -> Reshape -> MatMul: through a shape-only op
    model.graph.node.append(helper.make_node("Softmax", ["r_dq"], ["s"], name="softmax"))
    found = [v for v in check_model(model) if v.rule == "placement"]
    assert [v.node for v in found] == ["r_dequant"] and "feeds Softmax" in found[0].message
    consumer = node(model, "softmax")
    consumer.op_type = "Add"
    consumer.input.append("r_dq")
    assert check_model(model) == []


def test_int4_feeds_dequantize_linear_only():
    model = int4_block_matmul()
    model.graph.node.append(helper.make_node("Cast", ["w_q"], ["w_f"], name="cast", to=TensorProto.FLOAT))
    assert ("cast", "int4-consumer") in _found(model)


def test_many_violations_are_listed_one_per_line(tmp_path):
    """Issue 14: first few violations one per line and a count, not one 1,500-character line."""
    model = int8_matmul_conv()
    for i in range(12):
        model.graph.node.append(helper.make_node("Softmax", ["x_dq"], [f"s{i}"], name=f"softmax{i}"))
        model.graph.node.append(helper.make_node("MatMulInteger", ["y", "y"], [f"z{i}"], name=f"mmi{i}"))
    path = tmp_path / "denoise.onnx"
    onnx.save(model, path)
    with pytest.raises(ContractError) as info:
        require_contract([path])
    lines = info.value.problem.splitlines()
    assert lines[0].startswith("denoise.onnx breaks TensorRT's contract in 13 place(s) (rules: placement, unsupported-op):")
    assert len(lines) == 1 + ContractError.SHOWN + 1 and lines[-1] == "  ... and 8 more"
    assert all(len(line) < 400 for line in lines)


@pytest.mark.parametrize("placement,clean", [("tensorrt", True), ("onnxruntime", False)])
def test_exported_layer_forms_against_the_contract(placement, clean, tmp_path):
    """The exporter's TensorRT placement passes; ONNX Runtime's (int32 bias, output Q/DQ) does not."""
    import torch

    from qsched_export.export import onnx_io
    from qsched_export.export.qdq import swap_for_export
    from qsched_export.quant import get_scheme, observe_ranges, quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(1, 8, 6, 6)
    scheme = get_scheme("w8a8").with_placement(placement)
    quantize_model(net, scheme)
    with observe_ranges(net), torch.no_grad():
        net(x)
    swap_for_export(net, scheme.target_form)
    model = onnx_io.export_module(net, (x,), tmp_path / "m.onnx", ["x"], ["y"], 20)
    rules = {v.rule for v in check_model(model)}
    assert (rules == set()) is clean, rules
    if not clean:
        assert {"placement", "quant-dtype"} <= rules  # output Q/DQ before GroupNorm; the int32 bias DQ
