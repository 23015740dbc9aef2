"""Simulated quantization with exactly the numerics the exporter emits (torch side)."""

from qsched_export.quant.modules import (
    DEFAULT_SKIP_PATTERNS, QuantConv2d, QuantLayer, QuantLinear, QuantReport, activation_ranges, observe_ranges, quant_layers,
    quantize_model, set_activation_ranges, set_mode, skip_pattern,
)
from qsched_export.quant.schemes import SCHEMES, LayerQuant, Scheme, get_scheme, scheme_for

__all__ = ["DEFAULT_SKIP_PATTERNS", "SCHEMES", "LayerQuant", "QuantConv2d", "QuantLayer", "QuantLinear", "QuantReport", "Scheme", "activation_ranges",
           "get_scheme", "observe_ranges", "quant_layers", "quantize_model", "scheme_for", "set_activation_ranges", "set_mode",
           "skip_pattern"]
