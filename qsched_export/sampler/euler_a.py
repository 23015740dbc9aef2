"""Euler ancestral (diffusers `EulerAncestralDiscreteScheduler`), SDXL-Turbo's sampler.

x0 from the model output at sigma_i; d = (x_i - x0) / sigma_i;
x_{i+1} = x_i + (sigma_down - sigma_i) d + sigma_up z.  With eps-prediction and the Q-Sched
scalars this is c^x x_i + (sigma_down - sigma_i) c^eps eps + sigma_up z. Noise is drawn at every
step (sigma_up is 0 at the last one), as diffusers does.
"""

from __future__ import annotations

import torch

from qsched_export.errors import QSchedError
from qsched_export.plan import SamplerPlan

NAME = "euler_a"
SCHEDULER_CLASSES = ("EulerAncestralDiscreteScheduler",)


def plan(scheduler, num_steps: int) -> SamplerPlan:
    scheduler.set_timesteps(num_steps)
    sigmas = scheduler.sigmas
    keys = ("sigma", "sigma_sq_plus_one", "v_scale", "dt", "sigma_up")
    const: dict[str, list[float]] = {k: [] for k in keys}
    divisors = []
    for i in range(num_steps):
        # 1. sigmas of this step and the next, in float32 as the scheduler computes them
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        const["sigma"].append(sigma_from.item())
        const["sigma_sq_plus_one"].append((sigma_from**2 + 1).item())
        const["v_scale"].append((-sigma_from / (sigma_from**2 + 1) ** 0.5).item())
        const["dt"].append((sigma_down - sigma_from).item())
        const["sigma_up"].append(sigma_up.item())
        # scale_model_input: the denoiser sees x / sqrt(sigma^2 + 1)
        divisors.append(((sigma_from**2 + 1) ** 0.5).item())
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise QSchedError(f"prediction_type given as {scheduler.config.prediction_type} must be one of `epsilon`, or `v_prediction`",
                          "use a model trained with epsilon or v_prediction, or another scheduler")
    return SamplerPlan(
        family=NAME,
        prediction_type=scheduler.config.prediction_type,
        timesteps=tuple(float(t) for t in scheduler.timesteps),
        input_divisors=tuple(divisors),
        init_noise_sigma=float(scheduler.init_noise_sigma),
        noise_steps=(True,) * num_steps,
        constants={k: tuple(v) for k, v in const.items()},
    )


def step(plan: SamplerPlan, i: int, sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    c = {k: v[i] for k, v in plan.constants.items()}
    # 1. predicted x0 (sigma parametrisation)
    if plan.prediction_type == "epsilon":
        x0 = sample - c["sigma"] * model_output
    else:
        x0 = model_output * c["v_scale"] + sample / c["sigma_sq_plus_one"]
    # 2. Euler step to sigma_down, then the ancestral noise
    derivative = (sample - x0) / c["sigma"]
    prev_sample = sample + derivative * c["dt"]
    return prev_sample + noise * c["sigma_up"]
