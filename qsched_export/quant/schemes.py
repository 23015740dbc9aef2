"""The quantization schemes (torch side): re-exported from `runtimes.schemes`, where they live as
torch-free data so the runtimes, the targets and the CLI read the same definitions."""

from runtimes.schemes import (  # noqa: F401
    ACT_MODES, BITS, FORM_FP16, FORM_FP32, FORM_NBITS, FORM_QDQ, PLACEMENTS, SCHEMES, TARGET_FORMS, TARGETS, WEIGHT_RANGES,
    LayerQuant, Scheme, SchemeError, default_weight_range, get_scheme, require_cpu_support, scheme_for,
)
