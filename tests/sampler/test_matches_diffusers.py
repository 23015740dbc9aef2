"""With all coefficients 1, the Q-Sched sampler reproduces the stock diffusers pipeline bit for bit."""

from __future__ import annotations

import pytest
import torch

from qsched_export.pipeline import generate, load_pipeline

CASES = [
    # scheduler class, prediction type, time_cond_proj_dim, gamma, guidance
    ("LCMScheduler", "epsilon", None, None, 3.0),
    ("LCMScheduler", "v_prediction", None, None, 1.0),
    ("LCMScheduler", "epsilon", 8, None, 4.0),  # LCM-distilled UNet: guidance embedding, no CFG batch
    ("TCDScheduler", "v_prediction", None, 0.3, 3.0),
    ("TCDScheduler", "epsilon", None, 0.0, 2.0),
    ("EulerAncestralDiscreteScheduler", "epsilon", None, None, 3.0),
    ("EulerAncestralDiscreteScheduler", "v_prediction", None, None, 1.0),
]


@pytest.mark.parametrize("scheduler_cls,prediction_type,time_cond,gamma,guidance", CASES)
@pytest.mark.parametrize("steps", [1, 4])
def test_ones_reproduce_stock_pipeline(tiny_pipeline_factory, scheduler_cls, prediction_type, time_cond, gamma, guidance, steps):
    pipe = load_pipeline(str(tiny_pipeline_factory(scheduler_cls, prediction_type, time_cond)))
    extra = {"eta": gamma} if gamma is not None else {}
    stock = pipe("two small red circles", num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator().manual_seed(11), output_type="latent", **extra).images
    ours, images = generate(pipe, ["two small red circles"], steps=steps, guidance_scale=guidance, seed=11, gamma=gamma)
    assert stock.abs().max() > 0.1  # a real latent, not zeros
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-5)
    assert images.shape == (1, 3, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0
