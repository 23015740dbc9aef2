"""TCD / PCM: trajectory consistency distillation (diffusers `TCDScheduler`), with gamma (`eta` in diffusers).

x0 and eps from the model output; s' = floor((1 - gamma) t_prev);
x_s' = sqrt(a_s') x0 + sqrt(1 - a_s') eps;  x_prev = sqrt(a_prev/a_s') x_s' + sqrt(1 - a_prev/a_s') z.
gamma = 0 is deterministic (DDIM-like); no noise after the last step.
"""

from __future__ import annotations

import torch

from qsched_export.errors import QSchedError
from qsched_export.plan import SamplerPlan
from qsched_export.sampler.predictions import check_prediction_type, predicted_epsilon, predicted_original

NAME = "tcd"
SCHEDULER_CLASSES = ("TCDScheduler",)
DEFAULT_GAMMA = 0.3


def plan(scheduler, num_steps: int, gamma: float = DEFAULT_GAMMA) -> SamplerPlan:
    if not 0.0 <= gamma <= 1.0:
        raise QSchedError(f"gamma must be in [0, 1], got {gamma}", "pass --gamma 0.3 (the TCD authors' value) or 0 (deterministic)")
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps
    alphas_cumprod = scheduler.alphas_cumprod
    keys = ("sqrt_alpha", "sqrt_beta", "sqrt_alpha_s", "sqrt_beta_s", "renoise_scale", "noise_scale")
    const: dict[str, list[float]] = {k: [] for k in keys}
    for i, t in enumerate(timesteps):
        # 1. previous step value and the intermediate step s' = floor((1 - gamma) t_prev)
        prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else torch.tensor(0)
        timestep_s = torch.floor((1 - gamma) * prev_t).to(dtype=torch.long)
        # 2. alphas and betas, in float32 as diffusers computes them
        alpha_prod_t = alphas_cumprod[t]
        alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
        alpha_prod_s = alphas_cumprod[timestep_s]
        const["sqrt_alpha"].append((alpha_prod_t**0.5).item())
        const["sqrt_beta"].append(((1 - alpha_prod_t) ** 0.5).item())
        const["sqrt_alpha_s"].append(alpha_prod_s.sqrt().item())
        const["sqrt_beta_s"].append((1 - alpha_prod_s).sqrt().item())
        const["renoise_scale"].append((alpha_prod_t_prev / alpha_prod_s).sqrt().item())
        const["noise_scale"].append((1 - alpha_prod_t_prev / alpha_prod_s).sqrt().item())
    n = len(timesteps)
    return SamplerPlan(
        family=NAME,
        prediction_type=check_prediction_type(scheduler.config.prediction_type),
        timesteps=tuple(float(t) for t in timesteps),
        input_divisors=(1.0,) * n,
        init_noise_sigma=float(scheduler.init_noise_sigma),
        noise_steps=tuple(gamma > 0 and i != n - 1 for i in range(n)),
        constants={k: tuple(v) for k, v in const.items()},
        options={"gamma": float(gamma)},
    )


def step(plan: SamplerPlan, i: int, sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    c = {k: v[i] for k, v in plan.constants.items()}
    # 3. x0 and eps, then the sample at s'
    x0 = predicted_original(plan.prediction_type, sample, model_output, c["sqrt_alpha"], c["sqrt_beta"])
    eps = predicted_epsilon(plan.prediction_type, sample, model_output, x0, c["sqrt_alpha"], c["sqrt_beta"])
    noised = c["sqrt_alpha_s"] * x0 + c["sqrt_beta_s"] * eps
    # 4. inject fresh noise from s' forward to t_prev (gamma > 0, not the last step)
    if not plan.noise_steps[i]:
        return noised
    return c["renoise_scale"] * noised + c["noise_scale"] * noise
