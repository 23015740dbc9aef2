"""Converting a denoiser's output to x0 and eps, in the DDPM parametrisation x_t = sqrt(a) x0 + sqrt(1-a) eps.

Written with the same operations and operand order as diffusers' `LCMScheduler`/`TCDScheduler`,
so float32 results agree to the last bit or two.
"""

from __future__ import annotations

import torch

from qsched_export.errors import QSchedError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    """A scheduler config's prediction_type, refused up front if the step math has no case for it."""
    if prediction_type not in PREDICTION_TYPES:
        raise QSchedError(f"prediction_type {prediction_type!r} must be one of {', '.join(PREDICTION_TYPES)}",
                          "use a model trained with one of them, or another scheduler")
    return prediction_type


def predicted_original(prediction_type: str, sample: torch.Tensor, model_output: torch.Tensor, sqrt_alpha: float, sqrt_beta: float) -> torch.Tensor:
    if prediction_type == "epsilon":
        return (sample - sqrt_beta * model_output) / sqrt_alpha
    if prediction_type == "v_prediction":
        return sqrt_alpha * sample - sqrt_beta * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type {prediction_type!r} must be one of {', '.join(PREDICTION_TYPES)}")


def predicted_epsilon(prediction_type: str, sample: torch.Tensor, model_output: torch.Tensor, x0: torch.Tensor, sqrt_alpha: float, sqrt_beta: float) -> torch.Tensor:
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return sqrt_alpha * model_output + sqrt_beta * sample
    if prediction_type == "sample":
        return (sample - sqrt_alpha * x0) / sqrt_beta
    raise ValueError(f"prediction_type {prediction_type!r} must be one of {', '.join(PREDICTION_TYPES)}")
