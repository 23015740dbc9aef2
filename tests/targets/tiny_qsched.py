"""A qsched.json for a tiny pipeline without running the JAQ search: activation ranges observed
on one sampler run (as calibration observes them) and fixed Q-Sched ramps, for the schemes the
build tests need."""

from __future__ import annotations

from pathlib import Path

import torch

GUIDANCE = 2.0  # > 1: classifier-free guidance against the baked negative prompt
STEPS = 2


def write_qsched(model_dir: Path, path: Path, schemes: tuple[str, ...] = ("w8a8", "w4a16", "w4a8"), guidance: float = GUIDANCE) -> Path:
    from qsched_export.pipeline import denoise_fn, draw_noise, open_backbone
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import activation_ranges, get_scheme, observe_ranges
    from qsched_export.sampler import QSchedCoefficients, sample_loop

    backbone = open_backbone(str(model_dir), guidance=guidance)
    plan = backbone.plan(STEPS)
    cond = backbone.encode(["a red circle"])
    latents, noises = draw_noise(plan, backbone.latent_shape(1), torch.Generator().manual_seed(0))
    entries = {}
    for name in schemes:
        ranges = {}
        if get_scheme(name).static_activations:
            model, _ = backbone.scheme_model(name)
            with torch.no_grad(), observe_ranges(model):
                sample_loop(denoise_fn(backbone.denoiser(model), cond), plan, latents, noises)
            ranges = activation_ranges(model)
        entries[name] = SchemeEntry(QSchedCoefficients.ramp((0.98, 1.0), (0.95, 1.0), STEPS), activation_ranges=ranges)
    write_qsched(path, QSchedFile(str(model_dir), plan.family, STEPS, guidance, entries, plan.to_dict()))
    return path
