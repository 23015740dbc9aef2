"""Fake quantization with exactly ONNX's numerics, so PyTorch and the exported graph agree bit for bit.

Static (QuantizeLinear -> DequantizeLinear, zero point 0):
    q = saturate(round_half_to_even(x / scale)),  y = q * scale
computed in float32. ONNX divides by the scale, so we divide too: multiplying by the reciprocal
rounds differently for some inputs. int8 saturates to [-128, 127], int4 to [-8, 7]; scales are
amax / qmax with qmax = 127 or 7 (symmetric, so -128 / -8 are reachable only by saturation).
"7 bits" is int8 storage with weights in [-64, 63] (qmax 63), ONNX Runtime's `reduce_range`.

Dynamic (ONNX Runtime's MatMulNBits with accuracy_level=4, MLAS `QuantizeARow_CompInt8_avx2`):
each row of A is cut into blocks of `block` values along K; per block
    amax = max|a|,  scale = amax / 127,  inv = 127 / amax (0 when amax == 0),
    q = round_half_to_even(a * inv),  a' = q * scale
(MLAS multiplies by the reciprocal here, and rounds with `_mm256_round_ps(_MM_ROUND_NEAREST)`;
ARM NEON builds round half away from zero instead, which this simulates only up to ties).
"""

from __future__ import annotations

import torch

# Keys are the bits of the value range; 7 is int8 storage with a reduced range (see Scheme.reduce_range).
QMAX = {8: 127, 7: 63, 4: 7}
QMIN = {8: -128, 7: -64, 4: -8}
# No scale may be 0 (ONNX and TensorRT require scale > 0): an all-zero channel gets this one.
SCALE_FLOOR = 1e-12


def scale_from_amax(amax: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric scale amax / qmax in float32, floored so no scale is 0."""
    return (amax.to(torch.float32) / QMAX[bits]).clamp_min(SCALE_FLOOR)


def quantize(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """ONNX QuantizeLinear with zero point 0; int values in an int8 tensor (int4 too)."""
    q = torch.round(x.to(torch.float32) / scale)  # torch.round rounds half to even, as ONNX does
    return q.clamp_(QMIN[bits], QMAX[bits]).to(torch.int8)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear. `scale` broadcasts against `x` (0-d = per tensor)."""
    q = torch.round(x.to(torch.float32) / scale).clamp_(QMIN[bits], QMAX[bits])
    return (q * scale).to(x.dtype)


def _group(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in) -> (out, ceil(in / g), g), zero-padding the last group (zeros do not change amax)."""
    out_features, in_features = weight.shape
    pad = -in_features % group_size
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad))
    return weight.reshape(out_features, -1, group_size)


def weight_scale(weight: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Per-output-channel scales `(out,)`, or per (output channel, input group) `(out, ceil(in / g))`
    for a 2-D weight `(out, in)` with `group_size`."""
    w = weight.detach().to(torch.float32)
    if group_size is None:
        return scale_from_amax(w.abs().reshape(w.shape[0], -1).amax(dim=1), bits)
    if w.ndim != 2:
        raise ValueError(f"group-wise scales need a 2-D weight, got shape {tuple(w.shape)}")
    return scale_from_amax(_group(w, group_size).abs().amax(dim=2), bits)


def expand_weight_scale(scale: torch.Tensor, weight_shape: torch.Size, group_size: int | None) -> torch.Tensor:
    """The scale of every weight element, broadcastable against the weight."""
    if group_size is None:
        return scale.reshape(-1, *([1] * (len(weight_shape) - 1)))
    return scale.repeat_interleave(group_size, dim=1)[:, : weight_shape[1]]


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    return quantize(weight.detach(), expand_weight_scale(scale, weight.shape, group_size), bits)


def fake_quant_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    return fake_quant(weight.detach(), expand_weight_scale(scale, weight.shape, group_size), bits)


def dynamic_block_fake_quant(x: torch.Tensor, block: int) -> torch.Tensor:
    """int8 quantize-dequantize of the last dim in blocks of `block`, as MatMulNBits accuracy_level=4
    quantizes its A input at run time (see the module docstring for the rule)."""
    k = x.shape[-1]
    a = x.to(torch.float32).reshape(-1, k)
    pad = -k % block
    if pad:
        a = torch.nn.functional.pad(a, (0, pad))
    a = a.reshape(a.shape[0], -1, block)
    amax = a.abs().amax(dim=2, keepdim=True)
    scale = amax / 127.0
    inv = torch.where(amax != 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(a * inv).clamp_(-128, 127)
    out = (q * scale).reshape(a.shape[0], -1)[:, :k]
    return out.reshape(x.shape).to(x.dtype)
