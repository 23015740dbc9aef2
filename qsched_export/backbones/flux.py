"""FLUX-class flow-matching transformer pipelines (`FluxPipeline`: FLUX.1-schnell, FLUX.1-dev-like
guidance-distilled variants, and our samples/shapes-flux).

Numerics follow `FluxPipeline.__call__` without true CFG (no negative prompt):
- CLIP's `pooler_output` (`pooled_prompt_embeds`) and T5's last hidden state (`prompt_embeds`),
  each tokenizer padded to its length (T5's `max_sequence_length`, at most 512);
- latents drawn 4-D `(B, C, 2*(H // 2s), 2*(W // 2s))` (s = vae_scale_factor) and packed 2x2 into
  tokens for the transformer; the sampler works on the 4-D latent, which is the same elementwise
  math as the pipeline's step on the packed one (packing is a permutation), and the denoiser packs
  its input and unpacks its output;
- `img_ids` (row, column per token) and `txt_ids` (zeros) as constants, timestep `t / 1000`, the
  guidance input when the transformer has a guidance embedding;
- sigmas `linspace(1, 1/N, N)` with the scheduler's static shift, or `mu` from the image's token
  count when it shifts dynamically (`calculate_shift`);
- decode: `latents / scaling_factor + shift_factor`, then the VAE.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qsched_export.backbones.base import Backbone, Guidance, TokenizerRole, expand_batch, on_device_of
from qsched_export.errors import QSchedError
from qsched_export.quant import DEFAULT_SKIP_PATTERNS

NAME = "flux"
# FluxPipeline.__call__'s defaults.
PIPELINE_GUIDANCE = 3.5
MAX_TEXT_LENGTH = 512


class FluxBackbone(Backbone):
    NAME = NAME
    PIPELINE_CLASSES = ("FluxPipeline",)
    MODEL_ATTR = "transformer"
    # Also the final projection to latent patches ("proj_out" at the top level; the single-stream
    # blocks' own proj_out layers are quantized), as NVIDIA's FLUX recipes keep it.
    SKIP_PATTERNS = DEFAULT_SKIP_PATTERNS + (r"^(model\.)?proj_out$",)
    COND_NAMES = ("prompt_embeds", "pooled_prompt_embeds")
    FAMILIES = ("flow_euler",)

    def _text_length(self, text_length: int | None) -> int:
        # FluxPipeline pads T5 to max_sequence_length (default and maximum 512); a tokenizer with a
        # shorter model_max_length (our sample's) sets the model's own maximum.
        limit = min(MAX_TEXT_LENGTH, int(self.pipe.tokenizer_2.model_max_length))
        length = limit if text_length is None else int(text_length)
        if not 1 <= length <= limit:
            raise QSchedError(f"T5 length {length} is outside 1..{limit}, this model's maximum",
                              f"pass --max-sequence-length {limit} or less (FLUX.1-schnell was trained at 256)")
        return length

    @property
    def guidance_embedding(self) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)

    def default_guidance(self) -> Guidance:
        if self.guidance_embedding:
            return Guidance(PIPELINE_GUIDANCE, "FluxPipeline's default, fed to the transformer's guidance embedding")
        return Guidance(0.0, "the transformer has no guidance input (schnell-like): FluxPipeline ignores guidance")

    @property
    def do_cfg(self) -> bool:
        return False  # FluxPipeline's true CFG needs a negative prompt and true_cfg_scale: not exported

    def _default_size(self) -> int:
        # FluxPipeline defaults to 128 * vae_scale_factor (1024 px for FLUX.1); the VAE's own
        # sample_size says the same for FLUX.1 and gives a small model's trained size.
        return int(self.pipe.vae.config.sample_size)

    def _size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # latents are packed 2x2

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        s = self.vae_scale_factor
        return (batch, int(self.pipe.transformer.config.in_channels) // 4, 2 * (self.height // (2 * s)), 2 * (self.width // (2 * s)))

    @property
    def image_tokens(self) -> int:
        _, _, h, w = self.latent_shape(1)
        return (h // 2) * (w // 2)

    def plan(self, steps: int, **options):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.pipe.scheduler.config
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(self.image_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return super().plan(steps, sigmas=sigmas, mu=mu, **options)

    def tokenizer_roles(self) -> tuple[TokenizerRole, ...]:
        return (TokenizerRole("tokenizer", "input_ids", int(self.pipe.tokenizer.model_max_length)),
                TokenizerRole("tokenizer_2", "input_ids_2", self.text_length))

    def text_module(self) -> nn.Module:
        return _FluxText(self.pipe.text_encoder, self.pipe.text_encoder_2)

    def denoiser(self, model: nn.Module | None = None) -> nn.Module:
        _, _, h, w = self.latent_shape(1)
        img_ids = self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
        txt_ids = torch.zeros(self.text_length, 3, dtype=torch.float32)
        guidance = torch.full([1], self.guidance.scale, dtype=torch.float32) if self.guidance_embedding else None
        model = model if model is not None else self.pipe.transformer
        return on_device_of(model, FluxDenoiser(model, img_ids, txt_ids, guidance))


class _FluxText(nn.Module):
    """CLIP + T5 -> (prompt_embeds, pooled_prompt_embeds), as `FluxPipeline.encode_prompt`."""

    def __init__(self, clip: nn.Module, t5: nn.Module):
        super().__init__()
        self.clip = clip
        self.t5 = t5

    def forward(self, input_ids: torch.Tensor, input_ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.clip(input_ids, output_hidden_states=False).pooler_output
        return self.t5(input_ids_2, output_hidden_states=False)[0], pooled


def pack(latents: torch.Tensor) -> torch.Tensor:
    """`FluxPipeline._pack_latents`: `(B, C, h, w)` -> `(B, h/2 * w/2, 4C)`."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`FluxPipeline._unpack_latents`: `(B, h/2 * w/2, 4C)` -> `(B, C, h, w)`."""
    b, _, channels = tokens.shape
    tokens = tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return tokens.reshape(b, channels // 4, h, w)


class FluxDenoiser(nn.Module):
    """`FluxTransformer2DModel` on a 4-D latent: pack, call with the constant inputs, unpack.

    Args:
        transformer: the transformer (or a quantized / `HalfPrecision` copy).
        img_ids: `(h/2 * w/2, 3)` token positions. txt_ids: `(T5 length, 3)` zeros.
        guidance: `(1,)` guidance for a guidance-distilled transformer, else None.
    """

    def __init__(self, transformer: nn.Module, img_ids: torch.Tensor, txt_ids: torch.Tensor, guidance: torch.Tensor | None):
        super().__init__()
        self.transformer = transformer
        self.register_buffer("img_ids", img_ids, persistent=False)
        self.register_buffer("txt_ids", txt_ids, persistent=False)
        self.register_buffer("guidance", guidance, persistent=False)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor) -> torch.Tensor:
        batch, _, h, w = sample.shape
        # As the pipeline: the timestep in the latents' dtype, over the batch, divided by 1000.
        t = timestep.expand(batch).to(sample.dtype) / 1000
        guidance = None if self.guidance is None else expand_batch(self.guidance, batch)
        out = self.transformer(hidden_states=pack(sample), timestep=t, guidance=guidance, pooled_projections=pooled_prompt_embeds,
                               encoder_hidden_states=prompt_embeds, txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]
        return unpack(out, h, w)
