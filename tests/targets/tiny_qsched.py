"""A qsched.json for a tiny pipeline without running the JAQ search: activation ranges observed
on one sampler run (as calibration observes them) and fixed Q-Sched ramps, for the schemes the
build tests need."""

from __future__ import annotations

import copy
from pathlib import Path

GUIDANCE = 2.0  # > 1: classifier-free guidance, so the text encoder runs on [negative; prompt]
STEPS = 2


def write_qsched(model_dir: Path, path: Path, schemes: tuple[str, ...] = ("w8a8", "w4a16", "w4a8")) -> Path:
    from qsched_export.pipeline import generate, load_pipeline
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import get_scheme, observe_ranges, quantize_model
    from qsched_export.quant import activation_ranges as ranges_of
    from qsched_export.sampler import QSchedCoefficients, make_plan

    pipe = load_pipeline(str(model_dir))
    float_unet = pipe.unet
    entries = {}
    for name in schemes:
        unet = copy.deepcopy(float_unet)
        quantize_model(unet, name)
        ranges = {}
        if get_scheme(name).static_activations:
            pipe.unet = unet
            with observe_ranges(unet):
                generate(pipe, ["a red circle"], steps=STEPS, guidance_scale=GUIDANCE, seed=0)
            ranges = ranges_of(unet)
            pipe.unet = float_unet
        entries[name] = SchemeEntry(QSchedCoefficients.ramp((0.98, 1.0), (0.95, 1.0), STEPS), activation_ranges=ranges)
    family = make_plan(pipe.scheduler, STEPS).family
    write_qsched(path, QSchedFile(str(model_dir), family, STEPS, GUIDANCE, entries))
    return path
