"""Flow-match Euler (diffusers `FlowMatchEulerDiscreteScheduler`), FLUX.1-schnell's sampler.

x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v; with the Q-Sched scalars c^x x_i + (sigma_{i+1} - sigma_i) c^eps v.
With `stochastic_sampling` the step is x0 = x_i - sigma_i v, x_{i+1} = (1 - sigma_{i+1}) x0 + sigma_{i+1} z.
"""

from __future__ import annotations

import torch

from qsched_export.errors import QSchedError
from qsched_export.plan import SamplerPlan

NAME = "flow_euler"
SCHEDULER_CLASSES = ("FlowMatchEulerDiscreteScheduler",)


def plan(scheduler, num_steps: int, mu: float | None = None, sigmas: list[float] | None = None) -> SamplerPlan:
    """`sigmas`: the schedule a pipeline passes (FluxPipeline: linspace(1, 1/N, N)); `mu`: the shift
    for the image size, required when the scheduler uses dynamic shifting (FLUX-dev, SD3.5)."""
    if scheduler.config.use_dynamic_shifting and mu is None:
        raise QSchedError("this FlowMatchEulerDiscreteScheduler uses dynamic shifting: it needs mu for the image size",
                          "sample it through its pipeline's backbone (FluxPipeline computes mu), not with --scheduler")
    scheduler.set_timesteps(num_steps, sigmas=sigmas, **({"mu": mu} if mu is not None else {}))
    sigmas = scheduler.sigmas
    stochastic = bool(scheduler.config.stochastic_sampling)
    const = {
        "sigma": tuple(sigmas[i].item() for i in range(num_steps)),
        "sigma_next": tuple(sigmas[i + 1].item() for i in range(num_steps)),
        "dt": tuple((sigmas[i + 1] - sigmas[i]).item() for i in range(num_steps)),
        "one_minus_sigma_next": tuple((1.0 - sigmas[i + 1]).item() for i in range(num_steps)),
    }
    return SamplerPlan(
        family=NAME,
        prediction_type="flow",
        timesteps=tuple(float(t) for t in scheduler.timesteps),
        input_divisors=(1.0,) * num_steps,
        init_noise_sigma=1.0,
        noise_steps=(stochastic,) * num_steps,
        constants=const,
    )


def step(plan: SamplerPlan, i: int, sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    c = {k: v[i] for k, v in plan.constants.items()}
    if plan.noise_steps[i]:
        x0 = sample - c["sigma"] * model_output
        return c["one_minus_sigma_next"] * x0 + c["sigma_next"] * noise
    return sample + c["dt"] * model_output
