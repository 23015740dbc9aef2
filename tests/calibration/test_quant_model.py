"""quantize_model on the tiny UNet: which layers, ranges, and how much the output moves."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from qsched_export.errors import QSchedError
from qsched_export.quant import (
    DEFAULT_SKIP_PATTERNS, SCHEMES, LayerQuant, QuantAttention, QuantConv2d, QuantLinear, Scheme, SchemeError, activation_ranges, get_scheme,
    observe_ranges, quant_attentions, quant_layers, quantize_model, scheme_for, set_activation_ranges,
)
from qsched_export.testing import tiny_sd_components
from runtimes.cpu import CpuInfo
from runtimes.manifest import ArtifactError

# The tiny UNet: 4 transformer blocks x (2 attentions x 4 projections + 2 feed-forward) + 8 ResNet
# time_emb_proj = 48 Linear; 31 Conv2d (5 of them conv_shortcut); kept in float: conv_in, conv_out
# and the 2 time_embedding Linear.
LINEAR, CONV, SKIPPED = 48, 31, 4


@pytest.fixture(scope="module")
def unet():
    return tiny_sd_components()["unet"].eval()


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 4, 8, 8, generator=g), torch.tensor(t), torch.randn(2, 16, 16, generator=g)) for t in (999.0, 400.0)]


def _run(unet, batches):
    with torch.no_grad():
        return torch.cat([unet(x, t, encoder_hidden_states=c, return_dict=False)[0] for x, t, c in batches])


def _calibrated(unet, scheme, batches, **kwargs):
    q = copy.deepcopy(unet)
    report = quantize_model(q, scheme, **kwargs)
    with observe_ranges(q):
        _run(q, batches)
    return q, report


def _sqnr(ref, out):
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


@pytest.mark.parametrize("scheme,linear,conv", [("w8a8", LINEAR, CONV), ("w8a16", LINEAR, CONV), ("w4a8", LINEAR, CONV), ("w4a8s", LINEAR, CONV),
                                                 ("w4a16", LINEAR, CONV), ("w3a8", LINEAR, CONV)])
def test_quantizes_expected_layers(unet, scheme, linear, conv):
    q = copy.deepcopy(unet)
    report = quantize_model(q, scheme)
    layers = quant_layers(q)
    assert sum(isinstance(m, QuantLinear) for m in layers.values()) == linear
    assert sum(isinstance(m, QuantConv2d) for m in layers.values()) == conv
    assert sorted(report.quantized) == sorted(layers)
    assert len(report.skipped) == SKIPPED + (CONV if conv == 0 else 0)
    skip = re.compile("|".join(DEFAULT_SKIP_PATTERNS))
    assert not any(skip.search(n) for n in report.quantized)
    assert {n for n, why in report.skipped if why.startswith("skip pattern")} == {n for n, m in unet.named_modules()
                                                                                 if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and skip.search(n)}
    assert report.bytes_after < report.bytes_before


def test_fp_schemes_change_nothing(unet):
    q = copy.deepcopy(unet)
    for name in ("fp32", "fp16"):
        assert quantize_model(q, name).quantized == []
    assert not quant_layers(q)


def test_quantized_weight_and_scales(unet):
    q = copy.deepcopy(unet)
    quantize_model(q, "w4a8")
    layer = q.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    w = layer.quantized_weight()
    assert w.dtype == torch.int8 and w.shape == layer.module.weight.shape
    assert int(w.min()) >= -8 and int(w.max()) <= 7 and int(w.abs().max()) == 7
    assert layer.weight_scale.shape == (16, 1)  # 16 input features: one partial group of 32
    assert torch.equal(layer.dequantized_weight(), w.float() * layer.weight_scale)


def test_ranges_round_trip_and_sqnr(unet, batches):
    ref = _run(unet, batches)
    w8, _ = _calibrated(unet, "w8a8", batches)
    w4, _ = _calibrated(unet, "w4a8", batches)
    ranges = activation_ranges(w8)
    assert len(ranges) == LINEAR + CONV
    assert all(set(r) == {"input_amax", "output_amax"} and r["input_amax"] > 0 for r in ranges.values())
    assert activation_ranges(w4) == {}  # dynamic activations: nothing to store
    # Weight-only schemes isolate the weight bits: int4 blocks lose clearly more than int8 channels.
    w8_weights, _ = _calibrated(unet, "w8a16", batches)
    w4_weights, _ = _calibrated(unet, Scheme("w4-weights", linear=LayerQuant(4, group_size=32), conv=LayerQuant(4, group_size=32)), batches)
    sqnr8, sqnr4, sqnr8w, sqnr4w = (_sqnr(ref, _run(m, batches)) for m in (w8, w4, w8_weights, w4_weights))
    print(f"tiny UNet SQNR vs float: w8a8 {sqnr8:.1f} dB, w4a8 {sqnr4:.1f} dB, int8 weights only {sqnr8w:.1f} dB, int4 weights only {sqnr4w:.1f} dB")
    assert sqnr8 > 25 and sqnr4 > 15 and sqnr8w > sqnr4w + 6
    # Ranges loaded into a fresh copy reproduce the calibrated model exactly.
    fresh = copy.deepcopy(unet)
    quantize_model(fresh, "w8a8")
    set_activation_ranges(fresh, ranges)
    assert torch.equal(_run(fresh, batches), _run(w8, batches))


def test_observe_mode_is_float(unet, batches):
    q = copy.deepcopy(unet)
    quantize_model(q, "w8a8")
    ref = _run(unet, batches)
    with observe_ranges(q, percentile=99.0):
        observed = _run(q, batches)
    torch.testing.assert_close(observed, ref, rtol=1e-5, atol=1e-6)
    full, _ = _calibrated(unet, "w8a8", batches)
    name = "mid_block.resnets.0.conv1"
    assert quant_layers(q)[name].input_amax < quant_layers(full)[name].input_amax


def test_missing_or_mismatched_ranges_are_user_errors(unet, batches):
    q = copy.deepcopy(unet)
    quantize_model(q, "w8a8")
    with pytest.raises(QSchedError, match="no calibrated input_amax"):
        _run(q, batches)
    with pytest.raises(QSchedError, match="do not fit this model"):
        set_activation_ranges(q, {"not.a.layer": {"input_amax": 1.0, "output_amax": 1.0}})
    with pytest.raises(QSchedError, match="already quantized"):
        quantize_model(q, "w8a8")
    with pytest.raises(SchemeError, match="dynamic activations exist for Linear layers only"):
        Scheme("bad", conv=get_scheme("w4a8").linear)


AVX2 = CpuInfo("x86_64", "an AVX2 CPU", frozenset({"avx2", "fma"}))
AMX = CpuInfo("x86_64", "a Xeon", frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8"}))


def test_scheme_lookup():
    assert scheme_for("tensorrt", 4).name == "w4a16" and scheme_for("onnxruntime", 4).name == "w4a8"
    assert scheme_for("ort-mobile", 8).name == "w8a8" and scheme_for("tensorrt", 16).name == "fp16"
    with pytest.raises(QSchedError, match="bits must be 4, 8, 16 or 32"):  # the torch side's error, a UserError
        scheme_for("tensorrt", 3)
    with pytest.raises(QSchedError, match="use one of fp32, fp16, w8a8, w4a8, w4a8s, w8a16, w4a16, w3a8"):
        get_scheme("w2a2")
    assert [n for n, s in SCHEMES.items() if not s.exportable] == ["w3a8", "w4a6", "w8a6"]
    assert [scheme_for("onnxruntime", b).bits for b in (4, 8, 16, 32)] == [4, 8, 16, 32]


def test_placement_and_weight_range_per_target():
    """ONNX Runtime: Conv output quantized with the bias inside (QLinearConv), Linear float out;
    TensorRT: inputs only. The 7-bit range only where ORT's x86 kernel saturates (no VNNI/AMX)."""
    trt = scheme_for("tensorrt", 8, cpu=AVX2)
    assert trt.placement == "tensorrt" and trt.weight_range == "full"
    assert not trt.conv.quantize_outputs and not trt.linear.quantize_outputs and not trt.conv.bias_int32
    ort_avx2, ort_amx = scheme_for("onnxruntime", 8, cpu=AVX2), scheme_for("onnxruntime", 8, cpu=AMX)
    assert ort_avx2.weight_range == "7bit" and ort_amx.weight_range == "full"
    assert ort_amx.conv.quantize_outputs and ort_amx.conv.bias_int32 and not ort_amx.linear.quantize_outputs
    assert scheme_for("onnxruntime", 8, weight_range="full", cpu=AVX2).weight_range == "full"  # explicit wins
    assert scheme_for("ort-mobile", 8, cpu=AVX2).weight_range == "full"  # phones: ARM, exact
    assert scheme_for("onnxruntime", 8, scheme="w4a8s", cpu=AVX2).weight_range == "7bit"
    with pytest.raises(QSchedError, match="no int8 weights"):
        scheme_for("onnxruntime", 4, weight_range="full")
    with pytest.raises(QSchedError, match="int8 attention needs a quantized scheme"):
        scheme_for("onnxruntime", 32, int8_attention=True)
    with pytest.raises(SchemeError, match="int8 attention needs a scheme with static int8 activations"):
        Scheme("bad", linear=get_scheme("w4a8").linear, int8_attention=True)
    # A manifest's record round-trips; one without the newer fields (no placement, no attention) is
    # refused, not read with defaults its graphs may not have been written with.
    for scheme in (ort_avx2, trt, scheme_for("onnxruntime", 8, int8_attention=True), get_scheme("w4a8s"), get_scheme("fp16")):
        assert Scheme.from_dict(scheme.to_dict()) == scheme
    old = {k: v for k, v in ort_avx2.to_dict().items() if k not in ("placement", "int8_attention", "bits", "weight_range")}
    with pytest.raises(ArtifactError, match="lacks field\\(s\\) bits, placement, weight_range, int8_attention"):
        Scheme.from_dict(old)
    with pytest.raises(ArtifactError, match="has unknown field\\(s\\) sparsity"):
        Scheme.from_dict({**ort_avx2.to_dict(), "linear": {**ort_avx2.to_dict()["linear"], "sparsity": 2}})


def test_study_schemes_lose_more_than_the_exported_ones(unet, batches):
    """3-bit weights and 6-bit activations (study-only) move the output further than their 4/8-bit
    counterparts on the tiny UNet (measured: w8a8 27.3 dB, w8a6 16.7; w4a8 16.3, w3a8 9.5)."""
    ref = _run(unet, batches)
    sqnr = {name: _sqnr(ref, _run(_calibrated(unet, name, batches)[0], batches)) for name in ("w8a8", "w8a6", "w4a8", "w3a8")}
    print("tiny UNet SQNR vs float:", {k: round(v, 1) for k, v in sqnr.items()})
    assert sqnr["w8a6"] < sqnr["w8a8"] - 6 and sqnr["w3a8"] < sqnr["w4a8"] - 4
    q, _ = _calibrated(unet, "w3a8", batches)
    w = q.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q").quantized_weight()
    assert int(w.min()) >= -4 and int(w.max()) <= 3 and int(w.abs().max()) == 3


def test_w4a8s_requantizes_int4_to_int8_per_channel(unet, batches):
    """w4a8s stores int4 blocks; the kernel multiplies int8 weights, per output channel, with the
    scale of the dequantized int4 weight: the executed weight is exactly DQ8(Q8(DQ4(Q4(W))))."""
    q, _ = _calibrated(unet, "w4a8s", batches)
    layer = q.get_submodule("mid_block.resnets.0.conv1")
    q4, q8 = layer.quantized_weight(), layer.requantized_weight()
    assert int(q4.abs().max()) == 7 and int(q8.abs().max()) == 127 and q8.dtype == torch.int8
    dq4 = q4.float() * layer.weight_scale.repeat_interleave(64, dim=1)[:, : q4.shape[1]]
    assert torch.equal(layer.requant_scale, dq4.abs().flatten(1).amax(1) / 127)
    assert torch.equal(layer.dequantized_weight(), q8.float() * layer.requant_scale.view(-1, 1, 1, 1))
    # int8 requantization adds little to int4's own error, and static activations need ranges.
    assert set(activation_ranges(q)["mid_block.resnets.0.conv1"]) == {"input_amax", "output_amax"}
    assert float((layer.dequantized_weight() - dq4).abs().max()) <= float(layer.requant_scale.max()) / 2 * 1.0001


def test_int8_attention_is_simulated_and_its_ranges_round_trip(unet, batches):
    """Every attention of the tiny UNet (4 blocks x self + cross) gets int8 Q·Kᵀ and P·V; the
    observed q/k/v ranges go into the ranges file and reproduce the model exactly; the cost over
    w8a8 is measured, not assumed (tiny UNet: SQNR printed)."""
    ref = _run(unet, batches)
    scheme = scheme_for("onnxruntime", 8, int8_attention=True, weight_range="full")
    q, report = _calibrated(unet, scheme, batches)
    attentions = quant_attentions(q)
    assert len(attentions) == len(report.attention) == 8 and all(isinstance(a, QuantAttention) for a in attentions.values())
    ranges = activation_ranges(q)
    assert len(ranges) == LINEAR + CONV + 8
    assert all(set(ranges[name]) == {"q_amax", "k_amax", "v_amax"} and min(ranges[name].values()) > 0 for name in attentions)
    fresh = copy.deepcopy(unet)
    quantize_model(fresh, scheme)
    set_activation_ranges(fresh, ranges)
    assert torch.equal(_run(fresh, batches), _run(q, batches))
    # The attention quantizers move the output (they are not a no-op) but cost little on top of w8a8.
    plain, _ = _calibrated(unet, scheme_for("onnxruntime", 8, weight_range="full"), batches)
    sqnr_attn, sqnr_plain = _sqnr(ref, _run(q, batches)), _sqnr(ref, _run(plain, batches))
    print(f"tiny UNet SQNR vs float: w8a8 {sqnr_plain:.1f} dB, w8a8 + int8 attention {sqnr_attn:.1f} dB")
    assert not torch.equal(_run(q, batches), _run(plain, batches)) and sqnr_attn > sqnr_plain - 6
    # A w8a8 file with attention ranges also serves a scheme without int8 attention.
    set_activation_ranges(plain, ranges)
    with pytest.raises(QSchedError, match="has no calibrated q_amax"):
        set_activation_ranges(fresh, {**ranges, next(iter(attentions)): {"k_amax": 1.0, "v_amax": 1.0}})


def test_half_copy_is_deepcopy_then_half_and_leaves_the_original(unet):
    from qsched_export.backbones.base import half_copy

    unet.register_buffer("_probe", torch.arange(3, dtype=torch.float32), persistent=False)  # a floating buffer too
    try:
        copied, expected = half_copy(unet), copy.deepcopy(unet).half()
    finally:
        del unet._buffers["_probe"]
    got, want = dict(copied.named_parameters()), dict(expected.named_parameters())
    assert got.keys() == want.keys()
    for name, p in want.items():
        assert got[name].dtype == torch.float16 and torch.equal(got[name], p), name
    assert copied._probe.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(copied.parameters(), unet.parameters()))


def test_half_copy_does_not_share_tensors_that_already_are_half():
    from qsched_export.backbones.base import half_copy

    module = torch.nn.Linear(4, 4).half()
    copied = half_copy(module)
    assert copied.weight.data_ptr() != module.weight.data_ptr() and torch.equal(copied.weight, module.weight)
