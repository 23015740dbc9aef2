"""Hand-built one-node ONNX graphs run with ONNX Runtime: the references our fake quant must equal."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_model


def run(graph: onnx.GraphProto, feeds: dict, opset: int = 21, ms_domain: bool = False) -> np.ndarray:
    import onnxruntime as ort

    model = make_model(graph, opset, ms_domain=ms_domain)
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the nodes as written
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def qdq(x: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear -> DequantizeLinear (int8, zero point 0) on float input x."""
    zp = np.zeros(scale.shape, dtype=np.int8)
    attrs = {} if axis is None else {"axis": axis}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs), helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs)],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        initializer=[numpy_helper.from_array(scale.astype(np.float32), "s"), numpy_helper.from_array(zp, "zp")],
    )
    return run(graph, {"x": x.astype(np.float32)})


def int4_block_dq(q: np.ndarray, scale: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """Blockwise DequantizeLinear (opset 21) of an int4 initializer holding `q` (values in [-8, 7])."""
    w = helper.make_tensor("w", TensorProto.INT4, q.shape, q.astype(np.int8).flatten().tolist())
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s"], ["y"], axis=axis, block_size=block_size)],
        "dq4", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, q.shape)],
        initializer=[w, numpy_helper.from_array(scale.astype(np.float32), "s")],
    )
    return run(graph, {})


def pack_matmulnbits(q: np.ndarray, block_size: int) -> np.ndarray:
    """int4 weight `q` (N, K), values in [-8, 7], to MatMulNBits' B layout (N, ceil(K/bs), bs/2) uint8:
    unsigned values q + 8 (the default zero point 8), element 2j in the low nibble of byte j."""
    n, k = q.shape
    pad = -k % block_size
    u = np.pad(q.astype(np.int16) + 8, ((0, 0), (0, pad)), constant_values=8).astype(np.uint8)
    packed = u[:, 0::2] | (u[:, 1::2] << 4)
    return packed.reshape(n, -1, block_size // 2)


def matmul_nbits(a: np.ndarray, q: np.ndarray, scale: np.ndarray, block_size: int, accuracy_level: int) -> np.ndarray:
    """com.microsoft MatMulNBits: a (M, K) @ dequant(q (N, K), scale (N, ceil(K/bs)))^T."""
    n, k = q.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block_size,
                          accuracy_level=accuracy_level)],
        "mmnb", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a.shape)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, (a.shape[0], n))],
        initializer=[numpy_helper.from_array(pack_matmulnbits(q, block_size), "b"), numpy_helper.from_array(scale.astype(np.float32).flatten(), "s")],
    )
    return run(graph, {"a": a.astype(np.float32)}, ms_domain=True)
