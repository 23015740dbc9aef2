"""The Q-Sched sampler: one implementation of the few-step step math, used by calibration
(as a loop) and by the ONNX exporter (unrolled), so calibrated and exported behaviour cannot drift.

A family is one small module with `NAME`, `SCHEDULER_CLASSES`, `plan(scheduler, num_steps, **options)`
and `step(plan, i, sample, model_output, noise)`. Adding a family touches only its module and `FAMILIES`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from types import ModuleType

import torch

from qsched_export.errors import QSchedError
from qsched_export.sampler import euler_a, flow_euler, lcm, tcd
from qsched_export.plan import COEFF_RANGE, QSchedCoefficients, SamplerPlan

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (lcm, tcd, euler_a, flow_euler)}
SCHEDULER_TO_FAMILY: dict[str, str] = {cls: m.NAME for m in FAMILIES.values() for cls in m.SCHEDULER_CLASSES}

__all__ = ["COEFF_RANGE", "FAMILIES", "QSchedCoefficients", "SamplerPlan", "family_for_scheduler", "get_family", "make_plan", "qsched_step", "sample_loop"]


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise QSchedError(f"unknown sampler family {name!r}", f"use one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_scheduler(scheduler) -> ModuleType:
    cls = type(scheduler).__name__
    if cls not in SCHEDULER_TO_FAMILY:
        supported = ", ".join(f"{c} ({f})" for c, f in SCHEDULER_TO_FAMILY.items())
        raise QSchedError(f"unsupported scheduler {cls}", f"use a pipeline whose scheduler is one of {supported}, or pass --scheduler")
    return FAMILIES[SCHEDULER_TO_FAMILY[cls]]


def make_plan(scheduler, num_steps: int, **options) -> SamplerPlan:
    """Compute the per-step constants of `scheduler`'s family for `num_steps` steps."""
    if num_steps < 1:
        raise QSchedError(f"steps must be >= 1, got {num_steps}", "pass --steps 1 or more")
    family = family_for_scheduler(scheduler)
    accepted = inspect.signature(family.plan).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise QSchedError(f"--{unknown[0]} does not apply to the {family.NAME} sampler of this model", f"drop --{unknown[0]}")
    limit = scheduler.config.get("num_train_timesteps")
    if limit and num_steps > limit:
        raise QSchedError(f"steps must be at most the scheduler's {limit} training timesteps, got {num_steps}", "pass a few-step count such as --steps 4")
    try:
        return family.plan(scheduler, num_steps, **options)
    except ValueError as exc:  # the scheduler's own limits (e.g. LCM's original_inference_steps)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QSchedError(f"{type(scheduler).__name__} cannot run {num_steps} steps: {first}", "pass fewer --steps") from None


def _per_sample(coeff: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    # A tensor of coefficients holds one value per batch element, so one denoiser call can
    # evaluate many coefficient sets (the calibration grid); broadcast it over C, H, W.
    if isinstance(coeff, torch.Tensor) and coeff.ndim == 1:
        return coeff.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return coeff


def qsched_step(plan: SamplerPlan, i: int, sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None,
                latent_coeff: float | torch.Tensor = 1.0, output_coeff: float | torch.Tensor = 1.0) -> torch.Tensor:
    """One Q-Sched step: scale the latent by c^x and the model output by c^eps, then the family's step."""
    if plan.noise_steps[i] and noise is None:
        raise ValueError(f"step {i} of {plan.family} adds noise: pass its noise tensor")
    # Scalars equal to 1 are skipped so the unscaled sampler is bit-identical to diffusers.
    if not (isinstance(latent_coeff, float) and latent_coeff == 1.0):
        sample = sample * _per_sample(latent_coeff, sample)
    if not (isinstance(output_coeff, float) and output_coeff == 1.0):
        model_output = model_output * _per_sample(output_coeff, model_output)
    return FAMILIES[plan.family].step(plan, i, sample, model_output, noise)


Denoise = Callable[[torch.Tensor, float, int], torch.Tensor]


def sample_loop(denoise: Denoise, plan: SamplerPlan, latents: torch.Tensor, noises: Sequence[torch.Tensor | None],
                latent_coeff: Sequence[float] | torch.Tensor | None = None,
                output_coeff: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Run the few-step sampler.

    Args:
        denoise: `denoise(model_input, timestep, step_index) -> model_output`.
        plan: the family's per-step constants.
        latents (`torch.Tensor` of shape `(B, C, H, W)`): the initial standard Gaussian latent.
        noises: one tensor per step for the steps in `plan.noise_steps`, `None` elsewhere.
        latent_coeff, output_coeff: per-step c^x and c^eps, either sequences of `plan.num_steps`
            floats or tensors of shape `(num_steps,)` or `(num_steps, B)` (one set per batch element).
            Default: all ones.
    """
    if len(noises) != plan.num_steps:
        raise ValueError(f"expected {plan.num_steps} noise entries, got {len(noises)}")
    x = latents * plan.init_noise_sigma
    for i in range(plan.num_steps):
        model_input = x / plan.input_divisors[i] if plan.input_divisors[i] != 1.0 else x
        model_output = denoise(model_input, plan.timesteps[i], i)
        cx = 1.0 if latent_coeff is None else _index(latent_coeff, i)
        ce = 1.0 if output_coeff is None else _index(output_coeff, i)
        x = qsched_step(plan, i, x, model_output, noises[i], cx, ce)
    return x


def _index(coeff, i: int) -> float | torch.Tensor:
    value = coeff[i]
    return float(value) if not isinstance(value, torch.Tensor) or value.ndim == 0 else value
