"""The per-step constants of a few-step sampler and the Q-Sched coefficients that scale each step.

A `SamplerPlan` is everything the step math needs, as plain floats: the timesteps fed to the
denoiser, the divisor applied to its input, and each family's own per-step constants
(alphas, sigmas, c_skip/c_out ...). The PyTorch loop reads it, the ONNX exporter bakes it into
the graph as constants, and the manifest records it, so the three cannot disagree.

Torch-free (the qsched.json reader and the torch-free side import it); the step math that uses
it lives in qsched_export/sampler/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qsched_export.errors import QSchedError

# The plausible range of a Q-Sched coefficient. The paper searches ramp starts in about 0.8-1.2;
# a coefficient of 0 erases the latent or the model output (noise images), a negative one flips it,
# and 1e30 overflows the step math to NaN. Anything outside [0.25, 4] is a mistake, not a calibration.
COEFF_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class SamplerPlan:
    """Per-step constants of one family at one step count.

    Args:
        family (`str`): sampler family name (`lcm`, `tcd`, `euler_a`, `flow_euler`).
        prediction_type (`str`): what the denoiser predicts: `epsilon`, `v_prediction`, `sample` or `flow`.
        timesteps (`tuple[float, ...]`): the timestep passed to the denoiser at each step.
        input_divisors (`tuple[float, ...]`): the denoiser sees `latent / input_divisors[i]`.
        init_noise_sigma (`float`): the initial Gaussian latent is multiplied by this.
        noise_steps (`tuple[bool, ...]`): steps that add fresh Gaussian noise (stochastic samplers).
        constants (`dict[str, tuple[float, ...]]`): the family's per-step constants.
        options (`dict[str, float]`): family options such as TCD's gamma.
    """

    family: str
    prediction_type: str
    timesteps: tuple[float, ...]
    input_divisors: tuple[float, ...]
    init_noise_sigma: float
    noise_steps: tuple[bool, ...]
    constants: dict[str, tuple[float, ...]]
    options: dict[str, float] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        return any(self.noise_steps)

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "prediction_type": self.prediction_type,
            "timesteps": list(self.timesteps),
            "input_divisors": list(self.input_divisors),
            "init_noise_sigma": self.init_noise_sigma,
            "noise_steps": list(self.noise_steps),
            "constants": {k: list(v) for k, v in self.constants.items()},
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SamplerPlan":
        return cls(
            family=data["family"],
            prediction_type=data["prediction_type"],
            timesteps=tuple(data["timesteps"]),
            input_divisors=tuple(data["input_divisors"]),
            init_noise_sigma=float(data["init_noise_sigma"]),
            noise_steps=tuple(bool(b) for b in data["noise_steps"]),
            constants={k: tuple(v) for k, v in data["constants"].items()},
            options=dict(data.get("options", {})),
        )


@dataclass(frozen=True)
class QSchedCoefficients:
    """Q-Sched's two per-step scalars: `latent_coeff[i]` (c^x, multiplies the latent x_t) and
    `output_coeff[i]` (c^eps, multiplies the model output), applied at the top of step i.
    All ones is the original sampler."""

    latent_coeff: tuple[float, ...]
    output_coeff: tuple[float, ...]

    def __post_init__(self):
        if len(self.latent_coeff) != len(self.output_coeff):
            raise QSchedError(
                f"latent_coeff has {len(self.latent_coeff)} values but output_coeff has {len(self.output_coeff)}",
                "give one value per step in both vectors",
            )
        lo, hi = COEFF_RANGE
        for name in ("latent_coeff", "output_coeff"):
            bad = [v for v in getattr(self, name) if not (math.isfinite(v) and lo <= v <= hi)]
            if bad:
                raise QSchedError(f"{name} holds {bad[0]!r}, outside the plausible range {lo:g}..{hi:g}",
                                  "use coefficients from qsched-export calibrate (all 1.0 is the plain sampler)")

    @property
    def num_steps(self) -> int:
        return len(self.latent_coeff)

    @classmethod
    def ones(cls, num_steps: int) -> "QSchedCoefficients":
        return cls((1.0,) * num_steps, (1.0,) * num_steps)

    @classmethod
    def ramp(cls, latent: tuple[float, float], output: tuple[float, float], num_steps: int) -> "QSchedCoefficients":
        """The paper's parametrisation: each vector is linspace(start, end, num_steps)."""
        return cls(_linspace(*latent, num_steps), _linspace(*output, num_steps))

    def check_steps(self, num_steps: int) -> "QSchedCoefficients":
        if self.num_steps != num_steps:
            raise QSchedError(
                f"coefficients are for {self.num_steps} steps but the sampler runs {num_steps}",
                f"calibrate for --steps {num_steps} or pass --steps {self.num_steps}",
            )
        return self

    def to_dict(self) -> dict:
        return {"latent_coeff": list(self.latent_coeff), "output_coeff": list(self.output_coeff)}


def _linspace(start: float, end: float, n: int) -> tuple[float, ...]:
    if n == 1:
        return (float(start),)
    return tuple(float(start + (end - start) * i / (n - 1)) for i in range(n))
