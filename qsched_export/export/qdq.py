"""Export-time stand-ins for the calibration fake-quant layers (`qsched_export.quant.QuantLayer`).

Why stand-ins with `torch.autograd.Function.symbolic`, not post-processing an FP32 graph: each
layer then exports as exactly the nodes its fake-quant forward computes, with the calibrated
scales it holds, whatever the surrounding graph looks like after tracing (MatMul vs Gemm,
transposed weights, folded constants), and the int weights are module buffers, so the N unrolled
steps share one initializer per weight like the float parameters do.

Per layer (`QuantLayer` docstring for the numerics):
  static int8 activations (w8a8):  x -> Q -> DQ -> MatMul/Conv(no bias) [-> Q -> DQ] -> Add(bias)
  weights:  int8 initializer -> DequantizeLinear(per output channel: MatMul [K,N] axis 1, Conv KCRS axis 0)
            int4 initializer -> DequantizeLinear(axis 0 = K, block_size = group) -> MatMul   (w4a16, opset 21)
            int4 initializer -> DequantizeLinear(axis 1 = C, block_size = group) -> Conv     (w4a8, ONNX Runtime only)
  w4a8 (ONNX Runtime): com.microsoft MatMulNBits(bits 4, block = group, accuracy_level 4), whose
            int8 per-block dynamic activation quantization `numerics.dynamic_block_fake_quant` simulates.
The full Q/DQ pattern around MatMul/Conv is what ONNX Runtime fuses to QLinearMatMul/QLinearConv,
and it has zero points 0 and per-channel weight axes as TensorRT's explicit quantization demands.
Zero points are int8 constants on activations (QuantizeLinear defaults to uint8 without one) and
absent on weights (DequantizeLinear then takes the weight's own type).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qsched_export.errors import QSchedError
from qsched_export.quant import QuantConv2d, QuantLayer, QuantLinear, numerics

# How a scheme is written in the graph (`Manifest.target_form`).
FORM_FP32, FORM_FP16, FORM_QDQ, FORM_NBITS = "fp32", "fp16", "qdq", "matmulnbits"
MATMULNBITS_ACCURACY_LEVEL = 4  # int8 compute: activations quantized per block at run time


def target_form(scheme) -> str:
    if not scheme.quantized:
        return FORM_FP16 if scheme.float_dtype == "float16" else FORM_FP32
    return FORM_NBITS if scheme.linear is not None and scheme.linear.act_mode == "dynamic" else FORM_QDQ


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


class _MatMulNBits(torch.autograd.Function):
    """com.microsoft MatMulNBits; the traced forward unpacks B, so it also checks the packing."""

    @staticmethod
    def forward(ctx, x, packed, scales, in_features, out_features, block_size):
        q = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(out_features, -1)[:, :in_features].to(torch.float32) - 8
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
    pad = -k % block_size
    u = (F.pad(qweight.to(torch.int16), (0, pad)) + 8).to(torch.uint8).reshape(n, -1, block_size)
    return u[..., 0::2] | (u[..., 1::2] << 4)


class _ExportLayer(nn.Module):
    """What a `QuantLayer` becomes for export: the same numerics, written with graph-emitting functions."""

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
        return _QuantDequant.apply(x, self.input_scale) if self.spec.static_activations else x

    def _finish(self, y: torch.Tensor, bias_shape: tuple[int, ...]) -> torch.Tensor:
        if self.spec.quantize_outputs:
            y = _QuantDequant.apply(y, self.output_scale)
        return y if self.bias is None else y + self.bias.view(bias_shape)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._activation(x)
        if self.form == FORM_NBITS:
            y = _MatMulNBits.apply(x, self.packed_weight, self.nbits_scales, *self.nbits_shape)
        else:
            y = torch.matmul(x, _DequantizeWeight.apply(self.qweight, self.weight_scale, self.axis, self.block_size))
        return self._finish(y, (-1,))


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
        self.conv_args = (m.stride, m.padding, m.dilation, m.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _DequantizeWeight.apply(self.qweight, self.weight_scale, self.axis, self.block_size)
        y = F.conv2d(self._activation(x), weight, None, *self.conv_args)
        return self._finish(y, (1, -1, 1, 1))


def swap_for_export(model: nn.Module, form: str) -> int:
    """Replace every `QuantLayer` of `model` in place by its export stand-in; returns how many."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLayer)]
    for name, layer in layers:
        if layer.mode != "quant":
            raise QSchedError(f"layer {name} is in {layer.mode!r} mode", "export a model in quant mode (set_mode(model, 'quant'))")
        new = ExportConv2d(layer) if isinstance(layer, QuantConv2d) else ExportLinear(layer, form)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return len(layers)
