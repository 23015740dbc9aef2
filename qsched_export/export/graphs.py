"""The torch modules that become the artifact's graphs, and their I/O contract.

`UnrolledDenoise` is the heart: its forward runs the N sampler steps in a Python loop, calling
`qsched_export.sampler.qsched_step` (the same step math calibration uses), so tracing it bakes
every timestep, divisor, family constant, Q-Sched coefficient and the backbone denoiser's constant
inputs (negative prompt embeddings, guidance embedding, time ids, position ids) into the graph,
while the one denoiser module (one set of weights) is called N times.

Graph I/O, by name (the runtime feeds every graph from one pool of named tensors, in manifest order):
  text_encoder: one ids tensor per tokenizer (`input_ids`, `input_ids_2` ...) -> the backbone's
                conditioning tensors (`context`; `context`, `text_embeds`; `prompt_embeds`, ...)
  denoise:      the conditioning, `latents` (standard normal, the sampler's start), `noise`
                `[K, ...]` (stochastic samplers) -> `final_latents`, `first_latents`
  vae_decoder:  `final_latents` -> `image` `[B, 3, H, W]` in [0, 1]
  pipeline:     the ids, `latents` (+ `noise`) -> `image`, `first_latents` (with --fuse)

`first_latents` is for the parity check: one denoiser call from the golden inputs, so the runtime
and PyTorch differ only by that call's rounding. A quantized sampler can amplify a single int8
rounding flip over the later steps into a visibly different final latent (see runtimes/parity.py).
"""

from __future__ import annotations

import torch
from torch import nn

from qsched_export.backbones.base import FINAL_LATENTS, FIRST_LATENTS, IMAGE, LATENTS, NOISE
from qsched_export.sampler import QSchedCoefficients, SamplerPlan, qsched_step

IO = tuple[tuple[str, ...], tuple[str, ...]]
DECODER_IO: IO = ((FINAL_LATENTS,), (IMAGE,))


def text_io(backbone) -> IO:
    return tuple(r.input_name for r in backbone.tokenizer_roles()), tuple(backbone.COND_NAMES)


def denoise_io(backbone, plan: SamplerPlan) -> IO:
    draws = (LATENTS, NOISE) if plan.stochastic else (LATENTS,)
    return tuple(backbone.COND_NAMES) + draws, (FINAL_LATENTS, FIRST_LATENTS)


def pipeline_io(backbone, plan: SamplerPlan) -> IO:
    draws = (LATENTS, NOISE) if plan.stochastic else (LATENTS,)
    return text_io(backbone)[0] + draws, (IMAGE, FIRST_LATENTS)


class UnrolledDenoise(nn.Module):
    """The few-step sampler, unrolled: conditioning, initial latent (and per-step noise) ->
    (final latent, latent after the first step).

    Args:
        denoiser: a backbone denoiser, `(sample, timestep, *conditioning) -> model output`.
        plan: the family's per-step constants.
        coefficients: the Q-Sched c^x / c^eps per step, baked in as constants.
        num_cond: how many conditioning tensors lead the inputs.
    """

    def __init__(self, denoiser: nn.Module, plan: SamplerPlan, coefficients: QSchedCoefficients, num_cond: int):
        super().__init__()
        coefficients.check_steps(plan.num_steps)
        self.denoiser = denoiser
        self.plan = plan
        self.coefficients = coefficients
        self.num_cond = num_cond

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan
        cond, (latents, *rest) = inputs[:self.num_cond], inputs[self.num_cond:]
        noise = rest[0] if rest else None
        x = latents * plan.init_noise_sigma
        k = 0
        for i in range(plan.num_steps):
            model_input = x / plan.input_divisors[i] if plan.input_divisors[i] != 1.0 else x
            # A Python float timestep becomes a graph constant; the denoiser broadcasts it over the batch.
            model_output = self.denoiser(model_input, torch.tensor(plan.timesteps[i]), *cond)
            step_noise = None
            if plan.noise_steps[i]:
                step_noise = noise[k]
                k += 1
            x = qsched_step(plan, i, x, model_output, step_noise, self.coefficients.latent_coeff[i], self.coefficients.output_coeff[i])
            if i == 0:
                first = x
        return x, first


class FusedPipeline(nn.Module):
    """token ids (+ latents, noise) -> image: the three graphs in one, for small models."""

    def __init__(self, text: nn.Module, denoise: UnrolledDenoise, decoder: nn.Module, num_ids: int):
        super().__init__()
        self.text = text
        self.denoise = denoise
        self.decoder = decoder
        self.num_ids = num_ids

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.text(*inputs[:self.num_ids])
        final, first = self.denoise(*cond, *inputs[self.num_ids:])
        return self.decoder(final), first
