"""Our fake quant equals ONNX Runtime running hand-built Q/DQ graphs, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_refs
from qsched_export.quant import numerics


def _data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    # Put exact ties (k + 0.5) * scale and out-of-range values in, where rounding and saturation differ.
    flat = x.view(-1)
    flat[:8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 200.0, -300.0]) * 0.05
    return x


def test_int8_per_tensor_matches_ort_bitwise():
    x = _data((64, 48))
    scale = torch.tensor(0.05)
    ours = numerics.fake_quant(x, scale, 8).numpy()
    ref = onnx_refs.qdq(x.numpy(), scale.numpy())
    assert np.array_equal(ours, ref)
    assert ours.max() == pytest.approx(127 * 0.05) and ours.min() == pytest.approx(-128 * 0.05)


@pytest.mark.parametrize("axis", [0, 1])
def test_int8_per_channel_matches_ort_bitwise(axis):
    w = _data((24, 40), seed=1)
    scale = numerics.weight_scale(w if axis == 0 else w.T, 8, None)
    shape = (-1, 1) if axis == 0 else (1, -1)
    ours = numerics.fake_quant(w, scale.view(shape), 8).numpy()
    ref = onnx_refs.qdq(w.numpy(), scale.numpy(), axis=axis)
    assert np.array_equal(ours, ref)


def test_weight_fake_quant_equals_quantized_times_scale():
    w = _data((16, 70), seed=2)
    for bits, group in [(8, None), (4, 32)]:
        scale = numerics.weight_scale(w, bits, group)
        q = numerics.quantize_weight(w, scale, bits, group)
        assert q.dtype == torch.int8 and int(q.max()) <= numerics.QMAX[bits] and int(q.min()) >= numerics.QMIN[bits]
        expanded = numerics.expand_weight_scale(scale, w.shape, group)
        assert torch.equal(numerics.fake_quant_weight(w, scale, bits, group), q.float() * expanded)


def test_int4_blockwise_dequantize_matches_ort_bitwise():
    # 70 input features: two full groups of 32 and a partial one of 6.
    w = _data((16, 70), seed=3)
    scale = numerics.weight_scale(w, 4, 32)
    assert scale.shape == (16, 3)
    q = numerics.quantize_weight(w, scale, 4, 32)
    ours = numerics.fake_quant_weight(w, scale, 4, 32).numpy()
    ref = onnx_refs.int4_block_dq(q.numpy(), scale.numpy(), axis=1, block_size=32)
    assert np.array_equal(ours, ref)
    # The exporter's MatMul layout: W^T (in, out), blocked along axis 0.
    ref_t = onnx_refs.int4_block_dq(q.numpy().T.copy(), scale.numpy().T.copy(), axis=0, block_size=32)
    assert np.array_equal(ours.T, ref_t)


def test_zero_channel_gets_positive_scale():
    w = torch.zeros(4, 32)
    w[0, 0] = 1.0
    scale = numerics.weight_scale(w, 8, None)
    assert (scale > 0).all()
    assert torch.equal(numerics.fake_quant_weight(w, scale, 8, None), w)


@pytest.mark.parametrize("k", [96, 70])  # 70: a partial last block of 6
def test_w4a8_simulation_matches_matmulnbits_accuracy_level_4(k):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(8, k, generator=g)
    a[0, :32] = 0.0  # an all-zero block: scale 0 in MLAS, must give 0
    w = torch.randn(40, k, generator=g) * 0.1
    scale = numerics.weight_scale(w, 4, 32)
    q = numerics.quantize_weight(w, scale, 4, 32)
    w_dq = numerics.fake_quant_weight(w, scale, 4, 32)
    ours = (numerics.dynamic_block_fake_quant(a, 32).double() @ w_dq.double().T).numpy()
    weight_only = (a.double() @ w_dq.double().T).numpy()
    ort4 = onnx_refs.matmul_nbits(a.numpy(), q.numpy(), scale.numpy(), 32, accuracy_level=4).astype(np.float64)
    ort0 = onnx_refs.matmul_nbits(a.numpy(), q.numpy(), scale.numpy(), 32, accuracy_level=0).astype(np.float64)
    diff = np.abs(ours - ort4).max()
    print(f"K={k}: w4a8 simulation vs MatMulNBits accuracy_level=4: max abs diff {diff:.3e}; "
          f"weight-only vs level 4 {np.abs(weight_only - ort4).max():.3e}; weight-only vs level 0 {np.abs(weight_only - ort0).max():.3e}")
    # Only the float accumulation order differs from ORT's int8 kernel: float32 rounding level.
    assert diff < 1e-5 * np.abs(ort4).max()
    # And the activation quantization is really simulated: without it, ORT level 4 is far off.
    assert np.abs(weight_only - ort4).max() > 100 * diff
    assert np.abs(weight_only - ort0).max() < 1e-5 * np.abs(ort0).max()
