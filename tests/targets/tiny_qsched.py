"""A qsched.json for a tiny pipeline without running the JAQ search: activation ranges observed
on one sampler run (as calibration observes them) and fixed Q-Sched ramps, for the schemes the
build tests need."""

from __future__ import annotations

from pathlib import Path

GUIDANCE = 2.0  # > 1: classifier-free guidance against the baked negative prompt
STEPS = 2


def write_qsched(model_dir: Path, path: Path, schemes: tuple[str, ...] = ("w8a8", "w4a16", "w4a8"), guidance: float = GUIDANCE) -> Path:
    from qsched_export.sampler import QSchedCoefficients
    from qsched_export.testing import write_observed_qsched

    return write_observed_qsched(model_dir, path, schemes, steps=STEPS, guidance=guidance,
                                 coefficients=QSchedCoefficients.ramp((0.98, 1.0), (0.95, 1.0), STEPS))
