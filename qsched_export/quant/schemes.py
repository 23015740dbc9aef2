"""The quantization schemes (torch side): re-exported from `runtimes.schemes`, where they live as
torch-free data so the runtimes, the targets and the CLI read the same definitions.

`get_scheme` and `scheme_for` raise `QSchedError` here, as the torch side always has (both it and
`runtimes.schemes.SchemeError` are `UserError`s, which the CLI maps to one line)."""

from __future__ import annotations

import functools

from qsched_export.errors import QSchedError
from runtimes import schemes as _schemes
from runtimes.schemes import (  # noqa: F401
    ACT_MODES, BITS, FORM_FP16, FORM_FP32, FORM_NBITS, FORM_QDQ, PLACEMENTS, SCHEMES, TARGET_FORMS, TARGETS, WEIGHT_RANGES,
    LayerQuant, Scheme, SchemeError, default_weight_range, require_cpu_support,
)


def _torch_side(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SchemeError as exc:
            raise QSchedError(exc.problem, exc.fix) from None
    return wrapper


get_scheme = _torch_side(_schemes.get_scheme)
scheme_for = _torch_side(_schemes.scheme_for)
