"""Fake-quant layers that wrap a model's Linear/Conv2d layers in place, and the verbs around them.

The exporter turns each wrapped layer into ONNX nodes that compute exactly what `forward` does in
"quant" mode. Its public attributes (all it needs):

- `module`: the original float `nn.Linear` / `nn.Conv2d` (weight, bias, stride, padding ...).
- `scheme`: the `Scheme`; `spec`: its `LayerQuant` for this kind of layer (bits, group size,
  activation mode, output quantizers).
- `weight_scale`: float32, `(out,)` per output channel, or `(out, ceil(in / group), *kernel)` for
  blocks along the input features/channels of a weight `(out, in, *kernel)`.
- `quantized_weight()`: the integer weight, int8 storage (int4 values lie in [-8, 7]; with
  `spec.reduce_range`, int8 values lie in [-64, 63]), shaped like
  `module.weight`; `quantized_weight() * weight_scale` (expanded) is the dequantized weight.
- `input_scale`: 0-d float32, the static per-tensor int8 scale of the layer input (act_mode "static").
- `output_scale`: 0-d float32, the int8 scale of the layer's output (when `spec.quantize_outputs`).
  With `spec.bias_int32` (QLinearConv's form) quant mode computes
  `DQ(Q(DQ(Q(x)) * W_dq + bias_dq, output_scale))`, with the bias quantized to int32 at the scale
  `input_scale * weight_scale` (`bias_int32()`, `bias_scale()`); without outputs, `DQ(Q(x)) @ W_dq^T + bias`
  in float (ORT: MatMulIntegerToFloat; TensorRT: its own epilogue).
- `requant_scale` (`spec.requant_bits`): float32 `(out,)`, the per-output-channel scale of the int8
  weights that int4 weights are requantized to when the session loads; `requantized_weight()`
  their int8 values, computed exactly as the exported ONNX ops do it (float32: `q4 * s4 / s8`,
  round half to even, clip).
- `input_amax`, `output_amax`: the calibrated ranges (floats) the scales came from.

With act_mode "dynamic" (w4a8) the input is quantized at run time per row and block of
`spec.group_size` values along K (`numerics.dynamic_block_fake_quant`), which is what
MatMulNBits accuracy_level=4 does.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from qsched_export.errors import QSchedError
from qsched_export.quant import numerics
from qsched_export.quant.schemes import Scheme, get_scheme
from runtimes.schemes import ATTENTION_PROBS_SCALE

# Layers kept in float: timestep and text/pooled embeddings, the first and last conv (image <->
# latent features), positional/context embedders and the output norm, as in NVIDIA's diffusers INT8
# recipe (TensorRT demo / ModelOpt `filter_func`). That recipe also keeps `time_emb_proj` and the
# ResNet shortcut convs float; we quantize both (3% and 2% of SD1.5's UNet weights; with them INT8
# is 0.253x of the FP32 size instead of 0.295x). A regex searched in each module's dotted name.
DEFAULT_SKIP_PATTERNS: tuple[str, ...] = (
    "time_embedding", "conv_in", "conv_out", "add_embedding", "pos_embed", "time_text_embed", "context_embedder", "x_embedder",
    "norm_out",
)
MODES = ("float", "observe", "quant")


def _observed_amax(t: torch.Tensor, percentile: float | None) -> float:
    """max |t|, or with `percentile` that percentile of this call's |values|; calls combine by max
    (see observe_ranges)."""
    a = t.detach().abs().flatten().to(torch.float32)
    if percentile is None:
        return float(a.max())
    return float(a.kthvalue(max(1, math.ceil(percentile / 100 * a.numel()))).values)


class QuantLayer(nn.Module):
    """Base of `QuantLinear` and `QuantConv2d`. `mode`: "float" (the original layer), "observe"
    (float, recording input/output amax) or "quant" (fake-quant, the exported numerics)."""

    def __init__(self, module: nn.Linear | nn.Conv2d, scheme: Scheme, name: str):
        super().__init__()
        self.module = module
        self.scheme = scheme
        self.spec = scheme.linear if isinstance(module, nn.Linear) else scheme.conv
        self.name = name
        self.mode = "quant"
        self.percentile: float | None = None
        self.input_amax: float | None = None
        self.output_amax: float | None = None
        group, bits = self.spec.group_size, self.spec.weight_qbits
        self.register_buffer("weight_scale", numerics.weight_scale(module.weight, bits, group))
        weight_dq = numerics.fake_quant_weight(module.weight, self.weight_scale, bits, group)
        if self.spec.requant_bits:
            # int4 -> int8 once at session load: per output channel of the dequantized int4 weight.
            self.register_buffer("requant_scale", numerics.weight_scale(weight_dq, self.spec.int8_weight_bits, None))
            weight_dq = self.requantized_weight().to(torch.float32) * numerics.expand_weight_scale(self.requant_scale, weight_dq.shape, None)
        self.register_buffer("_weight_dq", weight_dq.to(module.weight.dtype), persistent=False)
        if self.spec.static_activations:
            self.register_buffer("input_scale", torch.tensor(float("nan")))
        if self.spec.quantize_outputs:
            self.register_buffer("output_scale", torch.tensor(float("nan")))

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's float weight: models read `layer.weight` for its dtype (transformers'
        T5 feed-forward casts its input to `wo.weight.dtype`), as they would on the plain layer."""
        return self.module.weight

    # -- what the exporter reads ---------------------------------------------------------------
    def quantized_weight(self) -> torch.Tensor:
        return numerics.quantize_weight(self.module.weight, self.weight_scale, self.spec.weight_qbits, self.spec.group_size)

    def requantized_weight(self) -> torch.Tensor:
        """The int8 weight a `requant_bits` layer runs with (int8 storage, values in the int8 range)."""
        dq4 = self.quantized_weight().to(torch.float32) * numerics.expand_weight_scale(self.weight_scale, self.module.weight.shape, self.spec.group_size)
        return numerics.quantize_weight(dq4, self.requant_scale, self.spec.int8_weight_bits, None)

    def dequantized_weight(self) -> torch.Tensor:
        return self._weight_dq

    def bias_scale(self) -> torch.Tensor:
        """Per output channel, `input_scale * weight_scale` (float32): the scale of the int32 bias."""
        scale = self.requant_scale if self.spec.requant_bits else self.weight_scale
        return (self.input_scale * scale).to(torch.float32)

    def bias_int32(self) -> torch.Tensor:
        """The bias quantized as QLinearConv adds it to the int32 accumulator (clipped to int32)."""
        q = torch.round(self.module.bias.detach().to(torch.float32) / self.bias_scale())
        return q.clamp_(-(2**31), 2**31 - 1).to(torch.int32)

    def needs_ranges(self) -> bool:
        return self.spec.static_activations

    # -- ranges --------------------------------------------------------------------------------
    def reset_observer(self) -> None:
        self.input_amax = None
        self.output_amax = None

    def set_ranges(self, input_amax: float | None, output_amax: float | None) -> None:
        self.input_amax, self.output_amax = input_amax, output_amax
        if self.spec.static_activations:
            self.input_scale.copy_(numerics.scale_from_amax(torch.tensor(self._need(input_amax, "input_amax")), self.spec.act_bits))
        if self.spec.quantize_outputs:
            self.output_scale.copy_(numerics.scale_from_amax(torch.tensor(self._need(output_amax, "output_amax")), self.spec.act_bits))

    def _need(self, value: float | None, what: str) -> float:
        if value is None or not math.isfinite(value):
            raise QSchedError(f"layer {self.name} has no calibrated {what}", "observe ranges on calibration prompts first (calibrate)")
        return float(value)

    def _observe(self, t: torch.Tensor) -> float:
        return _observed_amax(t, self.percentile)

    # -- forward -------------------------------------------------------------------------------
    def _product(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _bias_shaped(self, bias: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.module.bias is None else y + self._bias_shaped(self.module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return self.module(x)
        if self.mode == "observe":
            amax = self._observe(x)
            self.input_amax = amax if self.input_amax is None else max(self.input_amax, amax)
            y = self._product(x, self.module.weight)
            amax = self._observe(y)
            self.output_amax = amax if self.output_amax is None else max(self.output_amax, amax)
            return self._add_bias(y)
        if self.spec.act_mode == "static":
            if self.input_amax is None:
                self._need(None, "input_amax")
            x = numerics.fake_quant(x, self.input_scale, self.spec.act_bits)
        elif self.spec.act_mode == "dynamic":
            x = numerics.dynamic_block_fake_quant(x, self.spec.group_size, self.spec.act_bits)
        y = self._product(x, self._weight_dq)
        if self.spec.bias_int32 and self.module.bias is not None:
            y = y + self._bias_shaped((self.bias_int32().to(torch.float32) * self.bias_scale()).to(y.dtype))
            return numerics.fake_quant(y, self.output_scale, self.spec.act_bits)
        if self.spec.quantize_outputs:
            y = numerics.fake_quant(y, self.output_scale, self.spec.act_bits)
        return self._add_bias(y)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme.name}, mode={self.mode}"


class QuantLinear(QuantLayer):
    def _product(self, x, weight):
        return F.linear(x, weight)

    def _bias_shaped(self, bias):
        return bias


class QuantConv2d(QuantLayer):
    def _product(self, x, weight):
        m = self.module
        return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation, m.groups)

    def _bias_shaped(self, bias):
        return bias.view(1, -1, 1, 1)


def _fake_quant8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return numerics.fake_quant(x, scale, 8)


ATTENTION_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")  # diffusers' default processors, the ones int8 attention replaces


class QuantAttention:
    """A diffusers attention processor (replacing `AttnProcessor2_0`/`AttnProcessor`, as in
    UNet2DConditionModel's and SD3/PixArt-style `Attention` modules) whose Q·Kᵀ and P·V products
    take int8 inputs with static per-tensor scales:

        s = DQ(Q(q / sqrt(d), q_scale)) @ DQ(Q(k, k_scale))ᵀ (+ mask);  p = softmax(s)
        out = DQ(Q(p, 1/127)) @ DQ(Q(v, v_scale))

    The softmax scale is folded into q before its quantizer (one Mul, no scaling of the scores).
    Modes as `QuantLayer` ("float" runs the original processor; "observe" records the amax of
    q / sqrt(d), k and v). Scales are 0-d float32 tensors; the exporter swaps `qdq` for the
    graph-emitting QuantizeLinear/DequantizeLinear (export/qdq.py), same numerics."""

    def __init__(self, original, name: str):
        self.original = original
        self.name = name
        self.mode = "quant"
        self.percentile: float | None = None
        self.amax: dict[str, float | None] = {"q_amax": None, "k_amax": None, "v_amax": None}
        self.scales: dict[str, torch.Tensor] = {}
        self.qdq = _fake_quant8

    def reset_observer(self) -> None:
        self.amax = dict.fromkeys(self.amax)

    def set_ranges(self, ranges: dict[str, float | None]) -> None:
        for key in self.amax:
            value = ranges.get(key)
            if value is None or not math.isfinite(value):
                raise QSchedError(f"attention {self.name} has no calibrated {key}", "observe ranges on calibration prompts first (calibrate)")
            self.amax[key] = float(value)
            self.scales[key] = numerics.scale_from_amax(torch.tensor(float(value)), 8)
        self.scales["p"] = torch.tensor(ATTENTION_PROBS_SCALE, dtype=torch.float32)

    def _record(self, key: str, t: torch.Tensor) -> None:
        amax = _observed_amax(t, self.percentile)
        self.amax[key] = amax if self.amax[key] is None else max(self.amax[key], amax)

    def _attention(self, q, k, v, mask):
        q = q * (q.shape[-1] ** -0.5)
        if self.mode == "observe":
            for key, t in (("q_amax", q), ("k_amax", k), ("v_amax", v)):
                self._record(key, t)
            p = torch.softmax(q @ k.transpose(-1, -2) + (0 if mask is None else mask), dim=-1)
            return p @ v
        if not self.scales:
            raise QSchedError(f"attention {self.name} has no calibrated ranges", "observe ranges on calibration prompts first (calibrate)")
        q, k, v = (self.qdq(t, self.scales[key]) for t, key in ((q, "q_amax"), (k, "k_amax"), (v, "v_amax")))
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        return self.qdq(torch.softmax(scores, dim=-1), self.scales["p"]) @ v

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if self.mode == "float":
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        # AttnProcessor2_0's steps, with its scaled_dot_product_attention replaced by `_attention`.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        hidden_states = self._attention(query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def quant_attentions(model: nn.Module) -> dict[str, QuantAttention]:
    return {m.processor.name: m.processor for m in model.modules() if isinstance(getattr(m, "processor", None), QuantAttention)}


@dataclass
class QuantReport:
    """Which layers `quantize_model` quantized and skipped (with the reason), and weight bytes."""

    scheme: str
    quantized: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    attention: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "quantized": list(self.quantized), "skipped": [list(s) for s in self.skipped],
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "int8_attention": list(self.attention)}

    def __rich__(self):
        from rich.table import Table

        table = Table(title=f"{self.scheme}: {len(self.quantized)} layers quantized, {len(self.skipped)} kept in float")
        table.add_column("layer")
        table.add_column("status")
        for name in self.quantized:
            table.add_row(name, "quantized")
        for name in self.attention:
            table.add_row(name, "int8 attention")
        for name, reason in self.skipped:
            table.add_row(name, f"[dim]float: {reason}[/]")
        ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
        table.caption = f"parameters {self.bytes_before / 1e6:.2f} MB -> {self.bytes_after / 1e6:.2f} MB ({ratio:.2f}x)"
        return table


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def skip_pattern(name: str, skip: tuple[str, ...] = DEFAULT_SKIP_PATTERNS) -> str | None:
    """The first skip pattern found in a module's dotted name (None: the layer may be quantized)."""
    return next((p for p in skip if re.search(p, name)), None)


def quantize_model(model: nn.Module, scheme: Scheme | str, *, skip: tuple[str, ...] = DEFAULT_SKIP_PATTERNS) -> QuantReport:
    """Replace `model`'s Linear and Conv2d layers that the scheme quantizes in place by fake-quant
    layers in "quant" mode; returns the report."""
    scheme = get_scheme(scheme)
    report = QuantReport(scheme.name, bytes_before=_param_bytes(model))
    report.bytes_after = report.bytes_before
    if not scheme.quantized:
        return report
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer):
            raise QSchedError(f"{name} is already quantized", "quantize a fresh copy of the model")
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        hit = skip_pattern(name, skip)
        if hit is not None:
            report.skipped.append((name, f"skip pattern {hit!r}"))
        elif isinstance(module, nn.Conv2d) and scheme.conv is None:
            report.skipped.append((name, f"scheme {scheme.name} keeps Conv2d in float"))
        elif isinstance(module, nn.Linear) and scheme.linear is None:
            report.skipped.append((name, f"scheme {scheme.name} keeps Linear in float"))
        elif isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            report.skipped.append((name, f"padding_mode {module.padding_mode!r} is not exported"))
        else:
            targets.append((name, module))
    for name, module in targets:
        cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = cls(module, scheme, name)
        setattr(parent, child, layer)
        w = module.weight
        packed = w.numel() * layer.spec.weight_bits // 8
        report.bytes_after += packed + 4 * layer.weight_scale.numel() - w.numel() * w.element_size()
        report.quantized.append(name)
    if scheme.int8_attention:
        _quantize_attention(model, report, skip)
    return report


def _quantize_attention(model: nn.Module, report: QuantReport, skip: tuple[str, ...]) -> None:
    """Give every diffusers attention module with a default processor a `QuantAttention`; list the others as skipped."""
    for name, module in model.named_modules():
        processor = getattr(module, "processor", None)
        if processor is None or not _is_attention(module):
            continue
        hit = skip_pattern(name, skip)
        kind = type(processor).__name__
        if hit is not None:
            report.skipped.append((name, f"skip pattern {hit!r}"))
        elif kind not in ATTENTION_PROCESSORS:
            report.skipped.append((name, f"attention processor {kind} is not supported by int8 attention (only {', '.join(ATTENTION_PROCESSORS)})"))
        else:
            module.set_processor(QuantAttention(processor, name))
            report.attention.append(name)


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {m.name: m for m in model.modules() if isinstance(m, QuantLayer)}


def set_mode(model: nn.Module, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for layer in (*quant_layers(model).values(), *quant_attentions(model).values()):
        layer.mode = mode


@contextlib.contextmanager
def observe_ranges(model: nn.Module, percentile: float | None = None) -> Iterator[None]:
    """Run the float model inside this block to record each quantized layer's input and output
    amax (max |x| over all calls, or the max over calls of each call's `percentile` of |x|); on
    exit the ranges become the static scales and the layers switch to "quant" mode."""
    if percentile is not None and not 0 < percentile <= 100:
        raise QSchedError(f"percentile must be in (0, 100], got {percentile}", "use e.g. 99.99")
    layers = (*quant_layers(model).values(), *quant_attentions(model).values())
    for layer in layers:
        layer.reset_observer()
        layer.percentile = percentile
        layer.mode = "observe"
    try:
        yield
    finally:
        for layer in layers:
            layer.mode = "quant"
            layer.percentile = None
    for layer in layers:
        if isinstance(layer, QuantAttention):
            layer.set_ranges(layer.amax)
        elif layer.needs_ranges():
            layer.set_ranges(layer.input_amax, layer.output_amax)


def activation_ranges(model: nn.Module) -> dict[str, dict[str, float]]:
    """`{layer name: {"input_amax": .., "output_amax": ..}}` for layers with static activation
    scales, and `{attention name: {"q_amax", "k_amax", "v_amax"}}` with int8 attention, as stored
    in qsched.json. `output_amax` is written whenever it was observed (it is a float-model range,
    so the ranges serve every Q/DQ placement), and required when the scheme quantizes outputs."""
    ranges = {}
    for name, layer in quant_layers(model).items():
        if not layer.needs_ranges():
            continue
        entry = {"input_amax": layer._need(layer.input_amax, "input_amax")}
        if layer.spec.quantize_outputs or layer.output_amax is not None:
            entry["output_amax"] = layer._need(layer.output_amax, "output_amax")
        ranges[name] = entry
    for name, attention in quant_attentions(model).items():
        ranges[name] = {k: attention.amax[k] for k in attention.amax}
        for key, value in ranges[name].items():
            if value is None:
                raise QSchedError(f"attention {name} has no calibrated {key}", "observe ranges on calibration prompts first (calibrate)")
    return ranges


def set_activation_ranges(model: nn.Module, ranges: dict[str, dict[str, float]]) -> None:
    """Load ranges from qsched.json into a model quantized with the same scheme and skip list."""
    layers: dict = {n: l for n, l in quant_layers(model).items() if l.needs_ranges()}
    layers.update(quant_attentions(model))
    # Ranges of layers this scheme keeps float or quantizes without static scales (e.g. a file
    # that also holds attention ranges) are not an error: they are float-model observations.
    missing = sorted(set(layers) - set(ranges))
    extra = sorted(set(ranges) - set(quant_layers(model)) - _attention_names(model))
    if missing or extra:
        detail = (f"no range for {', '.join(missing[:3])}" if missing else "") + ("; " if missing and extra else "") + \
                 (f"ranges for unknown layers {', '.join(extra[:3])}" if extra else "")
        raise QSchedError(f"activation ranges do not fit this model ({detail})", "recalibrate this model with the same scheme")
    for name, layer in layers.items():
        if isinstance(layer, QuantAttention):
            layer.set_ranges(ranges[name])
        else:
            layer.set_ranges(ranges[name].get("input_amax"), ranges[name].get("output_amax"))


def _attention_names(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if _is_attention(m)}


def _is_attention(module: nn.Module) -> bool:
    """A diffusers attention module (one that takes an attention processor)."""
    return hasattr(module, "set_processor") and hasattr(module, "to_q")
