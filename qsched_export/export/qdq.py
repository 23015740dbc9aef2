"""Export-time stand-ins for the calibration fake-quant layers (`qsched_export.quant.QuantLayer`).

Why stand-ins with `torch.autograd.Function.symbolic`, not post-processing an FP32 graph: each
layer then exports as exactly the nodes its fake-quant forward computes, with the calibrated
scales it holds, whatever the surrounding graph looks like after tracing (MatMul vs Gemm,
transposed weights, folded constants), and the int weights are module buffers, so the N unrolled
steps share one initializer per weight like the float parameters do.

Per layer (`QuantLayer` docstring for the numerics; placements in runtimes/schemes.py):
  static int8 activations, placement "onnxruntime":
     Conv:    x -> Q -> DQ -> Conv(DQ(W), DQ(int32 bias)) -> Q -> DQ       (ORT: QLinearConv with bias)
     Linear:  x -> Q -> DQ -> MatMul(DQ(W)) -> Add(bias shaped [1, .., N]) (ORT: MatMulIntegerToFloat + Add;
              a 1-D bias would let ORT's MatMulAddFusion turn MatMul + Add into a Gemm first, which
              breaks the int8 fusion: measured 3x slower on a 4096x320x320 layer)
  static int8 activations, placement "tensorrt":
     x -> Q -> DQ -> MatMul/Conv(DQ(W)) -> Add(bias)                       (TensorRT fuses the rest)
  weights:  int8 initializer -> DequantizeLinear(per output channel: MatMul [K,N] axis 1, Conv KCRS axis 0)
            int4 initializer -> DequantizeLinear(axis 0 = K, block_size = group) -> MatMul   (w4a16, opset 21)
            int4 initializer -> DequantizeLinear(axis 1 = C, block_size = group) -> Conv     (w4a8, ONNX Runtime only)
            uint8 nibbles -> unpack (BitwiseAnd/BitShift) -> Cast(float) - 8 -> * expanded block scale
                 / int8 scale -> Round -> Clip -> Cast(int8) -> DequantizeLinear(per channel) (w4a8s, opset 20)
            ONNX Runtime constant-folds that chain when the session loads (it never folds a
            DequantizeLinear), so the int8 kernels fuse as for w8a8 and the file keeps int4's size.
  w4a8 (ONNX Runtime): com.microsoft MatMulNBits(bits 4, block = group, accuracy_level 4), whose
            int8 per-block dynamic activation quantization `numerics.dynamic_block_fake_quant` simulates.
  int8 attention: Q/DQ on q / sqrt(d), k, v and softmax(q kᵀ) (`QuantAttention`): ORT runs both
            products as MatMulIntegerToFloat, TensorRT takes them as its quantized BMM inputs.
Zero points are 0 and weight axes per output channel, as TensorRT's explicit quantization demands.
Zero points are int8 constants on activations (QuantizeLinear defaults to uint8 without one) and
absent on weights (DequantizeLinear then takes the weight's own type).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qsched_export.errors import QSchedError
from qsched_export.quant import QuantConv2d, QuantLayer, QuantLinear, numerics, quant_attentions
from runtimes.schemes import FORM_FP16, FORM_FP32, FORM_NBITS, FORM_QDQ  # noqa: F401 (re-exported for export/api.py)

MATMULNBITS_ACCURACY_LEVEL = 4  # int8 compute: activations quantized per block at run time


def target_form(scheme) -> str:
    """How `scheme` is written in the graph (`Scheme.target_form`)."""
    return scheme.target_form


class _QuantDequant(torch.autograd.Function):
    """Static per-tensor int8 QuantizeLinear -> DequantizeLinear, zero point 0."""

    @staticmethod
    def forward(ctx, x, scale):
        return numerics.fake_quant(x, scale, 8)

    @staticmethod
    def symbolic(g, x, scale):
        zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero), scale, zero)


class _DequantizeWeight(torch.autograd.Function):
    """DequantizeLinear of an int weight initializer: per channel along `axis`, or in blocks of
    `block_size` along `axis` (int4, opset 21; the exporter packs the int8 buffer to INT4 after tracing)."""

    @staticmethod
    def forward(ctx, qweight, scale, axis, block_size):
        if block_size:
            scale = scale.repeat_interleave(block_size, dim=axis).narrow(axis, 0, qweight.shape[axis])
        else:
            scale = scale.reshape([-1 if d == axis else 1 for d in range(qweight.ndim)])
        return qweight.to(torch.float32) * scale

    @staticmethod
    def symbolic(g, qweight, scale, axis, block_size):
        attrs = {"axis_i": axis} | ({"block_size_i": block_size} if block_size else {})
        return g.op("DequantizeLinear", qweight, scale, **attrs)


def pack_nibbles(q4: torch.Tensor) -> torch.Tensor:
    """int4 values (any shape) -> uint8 (ceil(n / 2),): `q + 8` two per byte, the first in the low nibble."""
    u = (q4.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    u = F.pad(u, (0, u.numel() % 2))
    return u[0::2] | (u[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, shape) -> torch.Tensor:
    """`pack_nibbles`' inverse, as float32 int4 values shaped `shape`."""
    n = math.prod(shape)
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(-1)[:n]
    return (nibbles.to(torch.float32) - 8).reshape(shape)


class _RequantizedWeight(torch.autograd.Function):
    """int4 block weight -> int8 per channel, then DequantizeLinear: what `QuantLayer.requantized_weight`
    computes, from the weight's nibbles packed in a uint8 buffer, written with ops ONNX Runtime
    constant-folds when the session loads (BitwiseAnd, BitShift, Concat, Reshape, Slice, Cast,
    Sub, Unsqueeze, Expand, Mul, Div, Round, Clip); only the DequantizeLinear stays in the graph.
    Not the INT4 type: that needs opset 21, where ONNX Runtime 1.32's optimizer breaks graphs with
    static int8 activations (onnx_io.default_opset), and a uint8 buffer holds the same bytes."""

    @staticmethod
    def forward(ctx, packed, s4, s8, shape, block_axis, block, channel_axis, qmax):
        q4 = unpack_nibbles(packed, shape)
        s4e = s4.repeat_interleave(block, dim=block_axis).narrow(block_axis, 0, shape[block_axis])
        s8e = s8.reshape([-1 if d == channel_axis else 1 for d in range(len(shape))])
        q8 = torch.round(q4 * s4e / s8e).clamp_(-qmax - 1, qmax)
        return q8 * s8e

    @staticmethod
    def symbolic(g, packed, s4, s8, shape, block_axis, block, channel_axis, qmax):
        const = lambda v, dtype=torch.int64: g.op("Constant", value_t=torch.tensor(v, dtype=dtype))  # noqa: E731
        s_sizes = s4.type().sizes()
        n = math.prod(shape)
        low = g.op("BitwiseAnd", packed, const(15, torch.uint8))
        high = g.op("BitShift", packed, const(4, torch.uint8), direction_s="RIGHT")
        nibbles = g.op("Concat", g.op("Unsqueeze", low, const([1])), g.op("Unsqueeze", high, const([1])), axis_i=1)
        nibbles = g.op("Slice", g.op("Reshape", nibbles, const([-1])), const([0]), const([n]), const([0]))
        q4 = g.op("Sub", g.op("Cast", g.op("Reshape", nibbles, const(list(shape))), to_i=1), const(8.0, torch.float32))  # 1 = FLOAT
        expanded = list(s_sizes)
        expanded.insert(block_axis + 1, block)
        flat = list(s_sizes)
        flat[block_axis] = s_sizes[block_axis] * block
        s4e = g.op("Reshape", g.op("Expand", g.op("Unsqueeze", s4, const([block_axis + 1])), const(expanded)), const(flat))
        s4e = g.op("Slice", s4e, const([0]), const([shape[block_axis]]), const([block_axis]))
        s8e = g.op("Reshape", s8, const([-1 if d == channel_axis else 1 for d in range(len(shape))]))
        w = g.op("Div", g.op("Mul", q4, s4e), s8e)
        w = g.op("Clip", g.op("Round", w), const(-qmax - 1.0, torch.float32), const(float(qmax), torch.float32))
        out = g.op("DequantizeLinear", g.op("Cast", w, to_i=3), s8, axis_i=channel_axis)  # 3 = INT8
        out.setType(s4.type().with_sizes(list(shape)))  # Conv's exporter needs the kernel's shape
        return out


class _MatMulNBits(torch.autograd.Function):
    """com.microsoft MatMulNBits; the traced forward unpacks B, so it also checks the packing."""

    @staticmethod
    def forward(ctx, x, packed, scales, in_features, out_features, block_size):
        q = unpack_nibbles(packed, (out_features, packed.shape[1] * block_size))[:, :in_features]
        scale = scales.reshape(out_features, -1).repeat_interleave(block_size, dim=1)[:, :in_features]
        return F.linear(numerics.dynamic_block_fake_quant(x, block_size), q * scale)

    @staticmethod
    def symbolic(g, x, packed, scales, in_features, out_features, block_size):
        out = g.op("com.microsoft::MatMulNBits", x, packed, scales, K_i=in_features, N_i=out_features, bits_i=4,
                   block_size_i=block_size, accuracy_level_i=MATMULNBITS_ACCURACY_LEVEL)
        sizes = x.type().sizes()
        if sizes is not None:
            out.setType(x.type().with_sizes([*sizes[:-1], out_features]))
        return out


def pack_matmulnbits(qweight: torch.Tensor, block_size: int) -> torch.Tensor:
    """int4 values (N, K) in [-8, 7] -> MatMulNBits' B (N, ceil(K/block), block/2) uint8: unsigned
    with the default zero point 8, two per byte, the first in the low nibble; K padded with 0 (stored 8)."""
    n, k = qweight.shape
    return pack_nibbles(F.pad(qweight, (0, -k % block_size))).reshape(n, -1, block_size // 2)


# -- the dynamo exporter's path ---------------------------------------------------------------
# The same four functions as torch.library custom ops (their eager forward is the autograd
# Functions' forward), translated to the same ONNX nodes by onnxscript (`dynamo_translations`).
# `use_dynamo_ops` switches the export layers to them; docs/EXPORTER.md has what was measured.
_DYNAMO = {"on": False}


@torch.library.custom_op("qsched::quant_dequant", mutates_args=())
def _op_quant_dequant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _QuantDequant.forward(None, x, scale)


@_op_quant_dequant.register_fake
def _(x, scale):
    return torch.empty_like(x)


@torch.library.custom_op("qsched::dequantize_weight", mutates_args=())
def _op_dequantize_weight(qweight: torch.Tensor, scale: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    return _DequantizeWeight.forward(None, qweight, scale, axis, block_size)


@_op_dequantize_weight.register_fake
def _(qweight, scale, axis, block_size):
    return torch.empty(qweight.shape, dtype=torch.float32, device=qweight.device)


@torch.library.custom_op("qsched::requantized_weight", mutates_args=())
def _op_requantized_weight(packed: torch.Tensor, s4: torch.Tensor, s8: torch.Tensor, shape: list[int], block_axis: int, block: int,
                           channel_axis: int, qmax: int) -> torch.Tensor:
    return _RequantizedWeight.forward(None, packed, s4, s8, shape, block_axis, block, channel_axis, qmax)


@_op_requantized_weight.register_fake
def _(packed, s4, s8, shape, block_axis, block, channel_axis, qmax):
    return torch.empty(shape, dtype=torch.float32, device=packed.device)


@torch.library.custom_op("qsched::matmulnbits", mutates_args=())
def _op_matmulnbits(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int, out_features: int, block_size: int) -> torch.Tensor:
    return _MatMulNBits.forward(None, x, packed, scales, in_features, out_features, block_size)


@_op_matmulnbits.register_fake
def _(x, packed, scales, in_features, out_features, block_size):
    return x.new_empty((*x.shape[:-1], out_features))


def _qdq(x, scale):
    return _op_quant_dequant(x, scale) if _DYNAMO["on"] else _QuantDequant.apply(x, scale)


def _dequantize_weight(qweight, scale, axis, block_size):
    return _op_dequantize_weight(qweight, scale, axis, block_size) if _DYNAMO["on"] else _DequantizeWeight.apply(qweight, scale, axis, block_size)


def _requantized_weight(*args):
    return _op_requantized_weight(*args) if _DYNAMO["on"] else _RequantizedWeight.apply(*args)


def _matmulnbits(*args):
    return _op_matmulnbits(*args) if _DYNAMO["on"] else _MatMulNBits.apply(*args)


@contextlib.contextmanager
def use_dynamo_ops() -> Iterator[None]:
    """Inside this block the export layers call the custom ops (for `torch.onnx.export(dynamo=True)`)."""
    previous, _DYNAMO["on"] = _DYNAMO["on"], True
    try:
        yield
    finally:
        _DYNAMO["on"] = previous


def dynamo_translations(opset: int) -> dict:
    """onnxscript functions writing each custom op as the TorchScript path's `symbolic` does."""
    import numpy as np
    import onnxscript
    from onnxscript import ir

    op = onnxscript.values.Opset("", opset)
    ms = onnxscript.values.Opset("com.microsoft", 1)
    assert MATMULNBITS_ACCURACY_LEVEL == 4  # written as a literal in the scripted function below

    def quant_dequant(x, scale):
        zero = op.Constant(value=ir.tensor(np.array(0, np.int8)))
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)

    def dequantize_weight(qweight, scale, axis: int, block_size: int):
        if block_size:
            return op.DequantizeLinear(qweight, scale, axis=axis, block_size=block_size)
        return op.DequantizeLinear(qweight, scale, axis=axis)

    def requantized_weight(packed, s4, s8, shape: list[int], block_axis: int, block: int, channel_axis: int, qmax: int):
        const = lambda v, dtype=np.int64: op.Constant(value=ir.tensor(np.array(v, dtype)))  # noqa: E731
        nibbles = op.Concat(op.Unsqueeze(op.BitwiseAnd(packed, const(15, np.uint8)), const([1])),
                            op.Unsqueeze(op.BitShift(packed, const(4, np.uint8), direction="RIGHT"), const([1])), axis=1)
        nibbles = op.Slice(op.Reshape(nibbles, const([-1])), const([0]), const([math.prod(shape)]), const([0]))
        q4 = op.Sub(op.Cast(op.Reshape(nibbles, const(list(shape))), to=1), const(8.0, np.float32))
        expanded = list(s4.shape)
        expanded.insert(block_axis + 1, block)
        flat = list(s4.shape)
        flat[block_axis] = s4.shape[block_axis] * block
        s4e = op.Reshape(op.Expand(op.Unsqueeze(s4, const([block_axis + 1])), const(expanded)), const(flat))
        s4e = op.Slice(s4e, const([0]), const([shape[block_axis]]), const([block_axis]))
        s8e = op.Reshape(s8, const([-1 if d == channel_axis else 1 for d in range(len(shape))]))
        w = op.Clip(op.Round(op.Div(op.Mul(q4, s4e), s8e)), const(-qmax - 1.0, np.float32), const(float(qmax), np.float32))
        return op.DequantizeLinear(op.Cast(w, to=3), s8, axis=channel_axis)

    @onnxscript.script(ms)
    def matmulnbits(x, packed, scales, in_features: int, out_features: int, block_size: int):
        # A scripted function: onnxscript has no schema for com.microsoft ops to call them eagerly.
        return ms.MatMulNBits(x, packed, scales, K=in_features, N=out_features, bits=4, block_size=block_size, accuracy_level=4)

    ops = torch.ops.qsched
    return {ops.quant_dequant.default: quant_dequant, ops.dequantize_weight.default: dequantize_weight,
            ops.requantized_weight.default: requantized_weight, ops.matmulnbits.default: matmulnbits}


class _ExportLayer(nn.Module):
    """What a `QuantLayer` becomes for export: the same numerics, written with graph-emitting functions."""

    # No float weight is kept (the graph holds the integer one). Models that read `layer.weight`
    # only to pick a cast dtype (transformers' T5 feed-forward) skip the cast for a non-tensor, as
    # they do for quantizers that set it to None.
    weight = None

    def __init__(self, layer: QuantLayer):
        super().__init__()
        self.spec = layer.spec
        self.name = layer.name
        self.bias = layer.module.bias  # the float parameter itself: shared, not copied
        if self.spec.static_activations:
            self.register_buffer("input_scale", layer.input_scale.detach().clone())
            if not torch.isfinite(self.input_scale):
                raise QSchedError(f"layer {layer.name} has no calibrated input range", "calibrate this scheme first (qsched-export calibrate)")
        if self.spec.quantize_outputs:
            self.register_buffer("output_scale", layer.output_scale.detach().clone())

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        return _qdq(x, self.input_scale) if self.spec.static_activations else x

    def _finish(self, y: torch.Tensor, bias_shape: tuple[int, ...]) -> torch.Tensor:
        if self.spec.quantize_outputs:
            y = _qdq(y, self.output_scale)
        return y if self.bias is None else y + self.bias.view(bias_shape)

    def _requant_buffers(self, layer: QuantLayer, qweight: torch.Tensor) -> None:
        """The int4 weight as packed nibbles (replacing the int8 `qweight`), and the int8 scales."""
        self.weight_shape = tuple(qweight.shape)
        self.register_buffer("packed4", pack_nibbles(qweight))
        del self.qweight
        self.register_buffer("requant_scale", layer.requant_scale.detach().clone())

    def _weight(self, axis: int, block_axis: int) -> torch.Tensor:
        """The float weight the product takes: DQ(int8), DQ(int4 block), or int4 requantized to int8."""
        if self.spec.requant_bits:
            return _requantized_weight(self.packed4, self.weight_scale, self.requant_scale, list(self.weight_shape), block_axis,
                                       self.spec.group_size, axis, numerics.QMAX[self.spec.int8_weight_bits])
        return _dequantize_weight(self.qweight, self.weight_scale, self.axis, self.block_size)


class ExportLinear(_ExportLayer):
    def __init__(self, layer: QuantLinear, form: str):
        super().__init__(layer)
        qweight = layer.quantized_weight()
        self.form = form
        group = self.spec.group_size
        if form == FORM_NBITS:
            self.register_buffer("packed_weight", pack_matmulnbits(qweight, group))
            self.register_buffer("nbits_scales", layer.weight_scale.detach().reshape(-1).clone())
            self.nbits_shape = (qweight.shape[1], qweight.shape[0], group)
        else:
            # MatMul takes B as (K, N): store the transposed int weight, scales along N (axis 1)
            # per channel, or (ceil(K/g), N) blocked along K (axis 0) for int4.
            self.register_buffer("qweight", qweight.t().contiguous())
            self.register_buffer("weight_scale", layer.weight_scale.detach().t().contiguous())
            self.axis, self.block_size = (0, group) if group else (1, 0)
            if self.spec.requant_bits:
                self._requant_buffers(layer, self.qweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == FORM_NBITS:
            y = _matmulnbits(self._activation(x), self.packed_weight, self.nbits_scales, *self.nbits_shape)
            return self._finish(y, (-1,))
        float_out = self.spec.static_activations and not self.spec.quantize_outputs
        # ORT's MatMulAddFusion turns a 2-D MatMul + Add (and a 1-D bias) into a Gemm before its
        # int8 fusion runs, which then keeps the weight's DequantizeLinear on every run (measured
        # 3x slower): a 2-D input goes through as [1, M, K] (lifted before its quantizer, so the
        # DequantizeLinear still feeds the MatMul), and the bias has the product's rank.
        lift = float_out and x.ndim == 2
        x = self._activation(x.unsqueeze(0) if lift else x)
        y = torch.matmul(x, self._weight(axis=1, block_axis=0))
        y = self._finish(y, (1,) * (y.ndim - 1) + (-1,) if float_out else (-1,))
        return y.squeeze(0) if lift else y


class ExportConv2d(_ExportLayer):
    def __init__(self, layer: QuantConv2d):
        super().__init__(layer)
        m = layer.module
        if isinstance(m.padding, str):
            raise QSchedError(f"layer {layer.name} uses padding={m.padding!r}, which is not exported", "keep it in float (skip list)")
        self.register_buffer("qweight", layer.quantized_weight())
        self.register_buffer("weight_scale", layer.weight_scale.detach().clone())
        # Per output channel along axis 0, or blocks of input channels along axis 1 (int4).
        self.axis, self.block_size = (1, self.spec.group_size) if self.spec.group_size else (0, 0)
        if self.spec.requant_bits:
            self._requant_buffers(layer, self.qweight)
        if self.spec.bias_int32 and self.bias is not None:
            self.register_buffer("qbias", layer.bias_int32())
            self.register_buffer("bias_scale", layer.bias_scale().detach().clone())
        self.conv_args = (m.stride, m.padding, m.dilation, m.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._weight(axis=0, block_axis=1)
        if self.spec.bias_int32 and self.bias is not None:
            # The int32 bias inside the quantized output: ORT fuses the three DQs, Conv and Q to QLinearConv with bias.
            bias = _dequantize_weight(self.qbias, self.bias_scale, 0, 0)
            return _qdq(F.conv2d(self._activation(x), weight, bias, *self.conv_args), self.output_scale)
        y = F.conv2d(self._activation(x), weight, None, *self.conv_args)
        return self._finish(y, (1, -1, 1, 1))


def swap_for_export(model: nn.Module, form: str) -> int:
    """Replace every `QuantLayer` of `model` in place by its export stand-in, and make every int8
    attention processor emit QuantizeLinear/DequantizeLinear nodes; returns how many layers."""
    for processor in quant_attentions(model).values():
        if processor.mode != "quant":
            raise QSchedError(f"attention {processor.name} is in {processor.mode!r} mode", "export a model in quant mode (set_mode(model, 'quant'))")
        processor.qdq = _qdq
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLayer)]
    for name, layer in layers:
        if layer.mode != "quant":
            raise QSchedError(f"layer {name} is in {layer.mode!r} mode", "export a model in quant mode (set_mode(model, 'quant'))")
        new = ExportConv2d(layer) if isinstance(layer, QuantConv2d) else ExportLinear(layer, form)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return len(layers)
