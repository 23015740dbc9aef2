"""With all coefficients 1, the Q-Sched sampler reproduces the stock diffusers pipelines bit for bit
(SD-class, SDXL-class and FLUX-class, every sampler family each is used with)."""

from __future__ import annotations

import pytest
import torch

from qsched_export.backbones.flux import pack
from qsched_export.pipeline import generate, open_backbone
from qsched_export.testing import save_tiny_flux, save_tiny_sdxl

PROMPT = "two small red circles"
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


def _stock(pipe, steps: int, guidance: float, **extra) -> torch.Tensor:
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(11), output_type="latent",
                **extra).images


@pytest.mark.parametrize("scheduler_cls,prediction_type,time_cond,gamma,guidance", CASES)
@pytest.mark.parametrize("steps", [1, 4])
def test_ones_reproduce_stable_diffusion(tiny_pipeline_factory, scheduler_cls, prediction_type, time_cond, gamma, guidance, steps):
    backbone = open_backbone(str(tiny_pipeline_factory(scheduler_cls, prediction_type, time_cond)), guidance=guidance)
    stock = _stock(backbone.pipe, steps, guidance, **({"eta": gamma} if gamma is not None else {}))
    ours, images = generate(backbone, [PROMPT], steps=steps, seed=11, gamma=gamma)
    assert stock.abs().max() > 0.1  # a real latent, not zeros
    assert torch.equal(ours, stock), (ours - stock).abs().max()
    assert images.shape == (1, 3, 16, 16) and 0.0 <= images.min() and images.max() <= 1.0


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    cache = {}

    def make(scheduler_cls: str):
        if scheduler_cls not in cache:
            cache[scheduler_cls] = save_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "pipe", scheduler_cls=scheduler_cls)
        return cache[scheduler_cls]
    return make


@pytest.mark.parametrize("scheduler_cls,guidance,gamma", [
    ("EulerAncestralDiscreteScheduler", 0.0, None),  # SDXL-Turbo: trailing spacing, no guidance
    ("EulerAncestralDiscreteScheduler", 2.0, None),  # with CFG: zeros as the empty negative prompt
    ("LCMScheduler", 1.0, None),
    ("TCDScheduler", 3.0, 0.3),
])
@pytest.mark.parametrize("steps", [1, 4])
def test_ones_reproduce_stable_diffusion_xl(tiny_sdxl, scheduler_cls, guidance, gamma, steps):
    backbone = open_backbone(str(tiny_sdxl(scheduler_cls)), guidance=guidance)
    stock = _stock(backbone.pipe, steps, guidance, **({"eta": gamma} if gamma is not None else {}))
    ours, _ = generate(backbone, [PROMPT], steps=steps, seed=11, gamma=gamma)
    assert stock.abs().max() > 0.1
    assert torch.equal(ours, stock), (ours - stock).abs().max()


@pytest.mark.parametrize("options", [{}, {"guidance_embeds": True}, {"use_dynamic_shifting": True}, {"shift": 3.0}],
                         ids=["schnell", "guidance-distilled", "dynamic-shift", "static-shift-3"])
@pytest.mark.parametrize("steps", [1, 4])
def test_ones_reproduce_flux(tmp_path, options, steps):
    backbone = open_backbone(str(save_tiny_flux(tmp_path / "flux", **options)))
    stock = backbone.pipe(PROMPT, num_inference_steps=steps, guidance_scale=backbone.guidance.scale, height=backbone.height, width=backbone.width,
                          max_sequence_length=backbone.text_length, generator=torch.Generator().manual_seed(11), output_type="latent").images
    ours, images = generate(backbone, [PROMPT], steps=steps, seed=11)
    assert stock.abs().max() > 0.1
    # The pipeline returns packed latents (B, tokens, 4C); ours are 4-D (packing is a permutation).
    assert torch.equal(pack(ours), stock), (pack(ours) - stock).abs().max()
    assert images.shape == (1, 3, 16, 16)
