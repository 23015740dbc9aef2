"""Simulated quantization with exactly the numerics the exporter emits (torch side). The scheme
definitions themselves are torch-free data in `runtimes.schemes`, re-exported here."""

from qsched_export.quant.modules import (
    DEFAULT_SKIP_PATTERNS, QuantAttention, QuantConv2d, QuantLayer, QuantLinear, QuantReport, activation_ranges, observe_ranges,
    quant_attentions, quant_layers, quantize_model, set_activation_ranges, set_mode, skip_pattern,
)
from qsched_export.quant.schemes import (
    BITS, SCHEMES, TARGETS, WEIGHT_RANGES, LayerQuant, Scheme, SchemeError, default_weight_range, get_scheme, scheme_for,
)

__all__ = ["BITS", "DEFAULT_SKIP_PATTERNS", "SCHEMES", "TARGETS", "WEIGHT_RANGES", "LayerQuant", "QuantAttention", "QuantConv2d", "QuantLayer",
           "QuantLinear", "QuantReport", "Scheme", "SchemeError", "activation_ranges", "default_weight_range", "get_scheme", "observe_ranges",
           "quant_attentions", "quant_layers", "quantize_model", "scheme_for", "set_activation_ranges", "set_mode", "skip_pattern"]
