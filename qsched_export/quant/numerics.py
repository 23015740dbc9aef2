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

import contextlib
from collections.abc import Iterator

import torch

# Keys are the bits of the value range; 7 is int8 storage with a reduced range (see Scheme.reduce_range).
# 6 and 3 exist for the study-only schemes (w8a6, w3a8) that show where quantization loss starts.
QMAX = {8: 127, 7: 63, 6: 31, 4: 7, 3: 3}
QMIN = {8: -128, 7: -64, 6: -32, 4: -8, 3: -4}
# No scale may be 0 (ONNX and TensorRT require scale > 0): an all-zero channel gets this one.
SCALE_FLOOR = 1e-12


def scale_from_amax(amax: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric scale amax / qmax in float32, floored so no scale is 0."""
    return (amax.to(torch.float32) / QMAX[bits]).clamp_min(SCALE_FLOOR)


def quantize(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """ONNX QuantizeLinear with zero point 0; int values in an int8 tensor (int4 too)."""
    q = torch.round(x.to(torch.float32) / scale)  # torch.round rounds half to even, as ONNX does
    return q.clamp_(QMIN[bits], QMAX[bits]).to(torch.int8)


# The share of activation roundings `fake_quant` sends the other way (see `flipped_roundings`).
_flip_share = 0.0


@contextlib.contextmanager
def flipped_roundings(share: float) -> Iterator[None]:
    """Inside this block `fake_quant` rounds the share `share` of its values to the other
    neighbour: those whose fraction lies within share / 2 of a tie. A runtime computes the same
    graph up to float order, which moves a few values across a rounding boundary; the output's
    distance to the exact fake-quant under a known flip share is the yardstick the parity check
    holds a runtime to (runtimes/parity.py: its errors are judged in flips, not in absolute units)."""
    global _flip_share
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    previous, _flip_share = _flip_share, share
    try:
        yield
    finally:
        _flip_share = previous


def _round(v: torch.Tensor) -> torch.Tensor:
    q = torch.round(v)  # half to even, as ONNX
    if _flip_share:
        near_tie = (v - torch.floor(v) - 0.5).abs() < _flip_share / 2
        q = torch.where(near_tie, torch.where(q > v, q - 1, q + 1), q)
    return q


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear. `scale` broadcasts against `x` (0-d = per tensor)."""
    q = _round(x.to(torch.float32) / scale).clamp_(QMIN[bits], QMAX[bits])
    return (q * scale).to(x.dtype)


def _group(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """(out, in, *kernel) -> (out, ceil(in / g), g, *kernel), zero-padding the last block of input
    features/channels (zeros do not change amax)."""
    pad = -weight.shape[1] % group_size
    if pad:
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], pad, *weight.shape[2:])], dim=1)
    return weight.reshape(weight.shape[0], -1, group_size, *weight.shape[2:])


def weight_scale(weight: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Per-output-channel scales `(out,)`, or with `group_size` one scale per output channel and
    block of input features/channels: `(out, ceil(in / g), *kernel)` for a weight `(out, in, *kernel)`."""
    w = weight.detach().to(torch.float32)
    if group_size is None:
        return scale_from_amax(w.abs().reshape(w.shape[0], -1).amax(dim=1), bits)
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


def dynamic_block_fake_quant(x: torch.Tensor, block: int, bits: int = 8) -> torch.Tensor:
    """Quantize-dequantize of the last dim in blocks of `block`, as MatMulNBits accuracy_level=4
    quantizes its A input at run time (see the module docstring for the rule); `bits` < 8 only
    for the study-only schemes."""
    qmax = float(QMAX[bits])
    k = x.shape[-1]
    a = x.to(torch.float32).reshape(-1, k)
    pad = -k % block
    if pad:
        a = torch.nn.functional.pad(a, (0, pad))
    a = a.reshape(a.shape[0], -1, block)
    amax = a.abs().amax(dim=2, keepdim=True)
    scale = amax / qmax
    inv = torch.where(amax != 0, qmax / amax, torch.zeros_like(amax))
    q = _round(a * inv).clamp_(QMIN[bits], QMAX[bits])
    out = (q * scale).reshape(a.shape[0], -1)[:, :k]
    return out.reshape(x.shape).to(x.dtype)
