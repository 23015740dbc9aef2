"""LCM: latent consistency models (diffusers `LCMScheduler`).

x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t);  denoised = c_out x0 + c_skip x_t;
x_prev = sqrt(a_prev) denoised + sqrt(1 - a_prev) z   (no noise after the last step).
"""

from __future__ import annotations

import torch

from qsched_export.plan import SamplerPlan
from qsched_export.sampler.predictions import check_prediction_type, predicted_original

NAME = "lcm"
SCHEDULER_CLASSES = ("LCMScheduler",)


def plan(scheduler, num_steps: int) -> SamplerPlan:
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps
    alphas_cumprod = scheduler.alphas_cumprod
    const: dict[str, list[float]] = {k: [] for k in ("sqrt_alpha", "sqrt_beta", "c_skip", "c_out", "sqrt_alpha_prev", "sqrt_beta_prev")}
    for i, t in enumerate(timesteps):
        # 1. get previous step value (diffusers keeps t itself after the last step)
        prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else t
        # 2. compute alphas, betas in float32 exactly as the scheduler does
        alpha_prod_t = alphas_cumprod[t]
        alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        const["sqrt_alpha"].append(alpha_prod_t.sqrt().item())
        const["sqrt_beta"].append((1 - alpha_prod_t).sqrt().item())
        const["c_skip"].append(float(c_skip))
        const["c_out"].append(float(c_out))
        const["sqrt_alpha_prev"].append(alpha_prod_t_prev.sqrt().item())
        const["sqrt_beta_prev"].append((1 - alpha_prod_t_prev).sqrt().item())
    n = len(timesteps)
    return SamplerPlan(
        family=NAME,
        prediction_type=check_prediction_type(scheduler.config.prediction_type),
        timesteps=tuple(float(t) for t in timesteps),
        input_divisors=(1.0,) * n,
        init_noise_sigma=float(scheduler.init_noise_sigma),
        noise_steps=tuple(i != n - 1 for i in range(n)),
        constants={k: tuple(v) for k, v in const.items()},
    )


def step(plan: SamplerPlan, i: int, sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    c = {k: v[i] for k, v in plan.constants.items()}
    # 3. predicted x0, then the consistency boundary condition
    x0 = predicted_original(plan.prediction_type, sample, model_output, c["sqrt_alpha"], c["sqrt_beta"])
    denoised = c["c_out"] * x0 + c["c_skip"] * sample
    # 4. noise back to the next timestep, except after the last step
    if not plan.noise_steps[i]:
        return denoised
    return c["sqrt_alpha_prev"] * denoised + c["sqrt_beta_prev"] * noise
