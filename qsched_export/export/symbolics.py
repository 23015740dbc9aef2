"""ONNX translations the TorchScript exporter lacks for the backbones we export.

`aten::rms_norm` (torch.nn.RMSNorm, FLUX's query/key norms) has no symbolic in torch's TorchScript
exporter up to opset 21 (ONNX's RMSNormalization arrived in opset 23, newer than ONNX Runtime and
TensorRT 10.3 take). It is written out as the float32 arithmetic PyTorch runs:
`x * 1 / sqrt(mean(x * x, last dims) + eps) * weight`.
"""

from __future__ import annotations

import torch
from torch.onnx import symbolic_helper

# The opsets the exporter writes (onnx_io.MIN_OPSET..MAX_OPSET); ReduceMean takes its axes as an input from 18.
_OPSETS = range(17, 22)
_registered = False


def _rms_norm(g, x, normalized_shape, weight, eps):
    shape = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
    eps_value = symbolic_helper._maybe_get_const(eps, "f")
    if eps_value is None or symbolic_helper._is_none(eps_value):
        eps_value = torch.finfo(torch.float32).eps  # torch.nn.RMSNorm's default for float32
    axes = list(range(-len(shape), 0))
    square = g.op("Mul", x, x)
    if g.opset >= 18:
        mean = g.op("ReduceMean", square, g.op("Constant", value_t=torch.tensor(axes, dtype=torch.int64)), keepdims_i=1)
    else:
        mean = g.op("ReduceMean", square, axes_i=axes, keepdims_i=1)
    denominator = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(float(eps_value), dtype=torch.float32))))
    out = g.op("Div", x, denominator)
    return out if symbolic_helper._is_none(weight) else g.op("Mul", out, weight)


def register() -> None:
    """Register the translations once per process (torch.onnx keeps them globally)."""
    global _registered
    if not _registered:
        for opset in _OPSETS:
            torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, opset)
        _registered = True
