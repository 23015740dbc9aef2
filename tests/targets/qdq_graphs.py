"""Hand-built ONNX graphs in TensorRT's explicit-quantization form, and ways to break each rule."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_model

RNG = np.random.default_rng(0)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def int8_matmul_conv(opset: int = 21, *, act_zp_dtype=TensorProto.INT8) -> onnx.ModelProto:
    """A valid INT8 graph: x [1,4,8,8] -> Q/DQ -> Conv (int8 weight per channel, axis 0) ->
    Reshape [64,8] -> Q/DQ -> MatMul (int8 weight [K,N] per channel, axis 1) -> y [64,6]."""
    conv_w = RNG.integers(-127, 128, size=(8, 4, 3, 3), dtype=np.int8)
    mm_w = RNG.integers(-127, 128, size=(8, 6), dtype=np.int8)
    inits = [
        _init("act_scale", np.array(0.05, np.float32)), _init("act_zp", np.array(0, np.int8)),
        _init("conv_w_q", conv_w), _init("conv_w_scale", np.full(8, 0.01, np.float32)), _init("conv_w_zp", np.zeros(8, np.int8)),
        _init("mm_w_q", mm_w), _init("mm_w_scale", np.full(6, 0.02, np.float32)), _init("mm_w_zp", np.zeros(6, np.int8)),
        _init("perm_shape", np.array([64, 8], np.int64)),
    ]
    if act_zp_dtype != TensorProto.INT8:
        inits[1] = helper.make_tensor("act_zp", act_zp_dtype, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "act_scale", "act_zp"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "act_scale", "act_zp"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["conv_w_q", "conv_w_scale", "conv_w_zp"], ["conv_w"], name="conv_w_dequant", axis=0),
        helper.make_node("Conv", ["x_dq", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "perm_shape"], ["r"], name="reshape"),
        helper.make_node("QuantizeLinear", ["r", "act_scale", "act_zp"], ["r_q"], name="r_quant"),
        helper.make_node("DequantizeLinear", ["r_q", "act_scale", "act_zp"], ["r_dq"], name="r_dequant"),
        helper.make_node("DequantizeLinear", ["mm_w_q", "mm_w_scale", "mm_w_zp"], ["mm_w"], name="mm_w_dequant", axis=1),
        helper.make_node("MatMul", ["r_dq", "mm_w"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 6])], inits)
    return make_model(graph, opset)


def int4_block_matmul(k: int = 64, n: int = 16, block: int = 32, opset: int = 21, weight_shape=None, consumer: str = "MatMul") -> onnx.ModelProto:
    """x [4,K] @ DQ(int4 weight [K,N], block scale [K/block, N], axis 0): TensorRT's INT4 weight-only form."""
    shape = weight_shape or (k, n)
    w = RNG.integers(-8, 8, size=shape).astype(np.int8)
    scale_shape = (shape[0] // block, *shape[1:])
    inits = [helper.make_tensor("w_q", TensorProto.INT4, list(shape), w.ravel().tolist()),
             _init("w_scale", np.full(scale_shape, 0.1, np.float32))]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="w_dequant", axis=0, block_size=block)]
    if consumer == "MatMul":
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"))
        x_shape, y_shape = [4, shape[0]], [4, shape[-1]]
    else:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], name="conv"))
        x_shape, y_shape = [1, shape[1], 8, 8], [1, shape[0], 8 - shape[2] + 1, 8 - shape[3] + 1]
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return make_model(graph, opset)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def set_init(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)
