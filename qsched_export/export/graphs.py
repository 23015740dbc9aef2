"""The torch modules that become the artifact's graphs, each with a fixed I/O contract.

`UnrolledDenoise` is the heart: its forward runs the N sampler steps in a Python loop, calling
`qsched_export.sampler.qsched_step` (the same step math calibration uses), so tracing it bakes
every timestep, divisor, family constant, Q-Sched coefficient and LCM guidance embedding into
the graph as constants, while the one denoiser module (one set of weights) is called N times.

I/O names are the runtime contract (`runtimes/pipeline.py`):
  text_encoder: input_ids [2B|B, L] int64 -> context [2B|B, L, D]
  denoise:      context, latents [B,C,h,w] (standard normal), noise [K,B,C,h,w] (if K > 0)
                -> final_latents, first_latents (the latent after the first step)
  vae_decoder:  latents [B,C,h,w] -> image [B,3,H,W] in [0, 1]
  pipeline:     input_ids, latents, noise -> image, first_latents (with --fuse)

`first_latents` is for the parity check: one denoiser call from the golden inputs, so the runtime
and PyTorch differ only by that call's rounding. A quantized sampler can amplify a single int8
rounding flip over the later steps into a visibly different final latent (see runtimes/parity.py).
"""

from __future__ import annotations

import torch
from torch import nn

from qsched_export.sampler import QSchedCoefficients, SamplerPlan, qsched_step

TEXT_ENCODER_IO = (("input_ids",), ("context",))
VAE_DECODER_IO = (("latents",), ("image",))


def denoise_io(plan: SamplerPlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    inputs = ("context", "latents", "noise") if plan.stochastic else ("context", "latents")
    return inputs, ("final_latents", "first_latents")


def pipeline_io(plan: SamplerPlan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    inputs = ("input_ids", "latents", "noise") if plan.stochastic else ("input_ids", "latents")
    return inputs, ("image", "first_latents")


class TextEncoder(nn.Module):
    """CLIPTextModel -> last_hidden_state, as `StableDiffusionPipeline.encode_prompt` takes it
    (no attention mask: SD's text encoders are called without one unless their config asks)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class VaeDecoder(nn.Module):
    """latents -> image in [0, 1] with 1/scaling_factor and the pipeline's (x/2 + 0.5).clamp(0, 1) baked in."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # Divide as `pipeline.decode_latents` does (not multiply by 1/sf), for the same float32 bits.
        image = self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


class HalfPrecision(nn.Module):
    """Runs a float16 denoiser inside a float32 sampler: the latent and the step math stay float32
    (as diffusers' schedulers upcast), only the network runs in float16. This is how the fp16
    scheme is expressed in the graph itself (fp16 initializers and Casts), which TensorRT's
    strongly typed networks require."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser.half()

    def forward(self, sample, timestep, context, timestep_cond=None):
        cond = None if timestep_cond is None else timestep_cond.half()
        return self.denoiser(sample.half(), timestep, context.half(), cond).float()


class UnrolledDenoise(nn.Module):
    """The few-step sampler, unrolled: initial latent (and per-step noise) -> (final latent, latent after the first step).

    Args:
        denoiser: `UNetDenoiser` (or `HalfPrecision` around one): `(sample, timestep, context, timestep_cond) -> model output`.
        plan: the family's per-step constants.
        coefficients: the Q-Sched c^x / c^eps per step, baked in as constants.
        timestep_cond (`torch.Tensor` of shape `(B, D)`, optional): LCM's guidance embedding, baked in.
    """

    def __init__(self, denoiser: nn.Module, plan: SamplerPlan, coefficients: QSchedCoefficients, timestep_cond: torch.Tensor | None = None):
        super().__init__()
        coefficients.check_steps(plan.num_steps)
        self.denoiser = denoiser
        self.plan = plan
        self.coefficients = coefficients
        self.register_buffer("timestep_cond", timestep_cond, persistent=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan
        x = latents * plan.init_noise_sigma
        k = 0
        for i in range(plan.num_steps):
            model_input = x / plan.input_divisors[i] if plan.input_divisors[i] != 1.0 else x
            # A Python float timestep becomes a graph constant; the denoiser broadcasts it over the batch.
            model_output = self.denoiser(model_input, torch.tensor(plan.timesteps[i]), context, self.timestep_cond)
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

    def __init__(self, text_encoder: TextEncoder, denoise: UnrolledDenoise, vae_decoder: VaeDecoder):
        super().__init__()
        self.text_encoder = text_encoder
        self.denoise = denoise
        self.vae_decoder = vae_decoder

    def forward(self, input_ids: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        final, first = self.denoise(self.text_encoder(input_ids), latents, noise)
        return self.vae_decoder(final), first
