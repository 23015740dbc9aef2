"""SDXL-class UNet pipelines (`StableDiffusionXLPipeline`: SDXL, SDXL-Turbo, LCM/TCD/PCM-SDXL and
SDXL LoRA-distilled checkpoints): two CLIP text encoders and the UNet's "text_time" added conditioning.

Numerics follow `StableDiffusionXLPipeline.encode_prompt` and `__call__` (clip_skip None):
- `context`: both encoders' penultimate hidden states (`hidden_states[-2]`) concatenated on the
  feature axis; `text_embeds`: the second encoder's projected pooled output;
- `time_ids`: `original_size + crops_coords_top_left + target_size` = `(H, W, 0, 0, H, W)`, the same
  for the negative half;
- with classifier-free guidance and no negative prompt, `force_zeros_for_empty_prompt` (True for
  SDXL) makes the negative `context` and `text_embeds` zeros; otherwise the negative prompt is encoded.
"""

from __future__ import annotations

import torch
from torch import nn

from qsched_export.backbones.base import Guidance, TokenizerRole, on_device_of
from qsched_export.backbones.sd import SDBackbone, UNetDenoiser

NAME = "sdxl"
# SDXL-Turbo samples with guidance 0 (its model card and diffusers' docs): Euler-ancestral with
# "trailing" spacing is its recipe.
TURBO_GUIDANCE = 0.0


class SDXLBackbone(SDBackbone):
    NAME = NAME
    PIPELINE_CLASSES = ("StableDiffusionXLPipeline",)
    COND_NAMES = ("context", "text_embeds")
    PIPELINE_GUIDANCE = 5.0  # StableDiffusionXLPipeline.__call__'s default

    def default_guidance(self) -> Guidance:
        scheduler = self.pipe.scheduler
        turbo = type(scheduler).__name__ == "EulerAncestralDiscreteScheduler" and scheduler.config.get("timestep_spacing") == "trailing"
        if turbo and not self.guidance_embedding:
            return Guidance(TURBO_GUIDANCE, "Euler-ancestral with trailing spacing is SDXL-Turbo's recipe, sampled without guidance")
        return super().default_guidance()

    def tokenizer_roles(self) -> tuple[TokenizerRole, ...]:
        roles = [("tokenizer", "input_ids"), ("tokenizer_2", "input_ids_2")]
        return tuple(TokenizerRole(attr, name, int(getattr(self.pipe, attr).model_max_length)) for attr, name in roles
                     if getattr(self.pipe, attr, None) is not None)

    def text_module(self) -> nn.Module:
        encoders = [e for e in (self.pipe.text_encoder, self.pipe.text_encoder_2) if e is not None]
        return _SDXLText(encoders)

    def negative_conditioning(self) -> dict[str, torch.Tensor]:
        if not self.negative_prompt and self.pipe.config.force_zeros_for_empty_prompt:
            return {k: torch.zeros_like(v) for k, v in self._encode([""]).items()}
        return self._encode([self.negative_prompt])

    def time_ids(self) -> torch.Tensor:
        """`(1, 6)` float32, as `_get_add_time_ids` makes them (it also checks the UNet's embedding width)."""
        size = (self.height, self.width)
        projection_dim = self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None else None
        if projection_dim is None:
            projection_dim = int(self._encode([""])["text_embeds"].shape[-1])
        return self.pipe._get_add_time_ids(size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=projection_dim)

    def denoiser(self, model: nn.Module | None = None) -> nn.Module:
        model = model if model is not None else self.pipe.unet
        return on_device_of(model, UNetDenoiser(model, self.guidance.scale, self.do_cfg,
                            self.negative_conditioning() if self.do_cfg else None, self.guidance_embedding_input(), self.COND_NAMES,
                            added_cond={"time_ids": self.time_ids()}, added_cond_names=("text_embeds",)))


class _SDXLText(nn.Module):
    """Both CLIP text encoders -> (context, text_embeds), as `StableDiffusionXLPipeline.encode_prompt`."""

    def __init__(self, encoders: list[nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)

    def forward(self, *input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for encoder, ids in zip(self.encoders, input_ids):
            out = encoder(ids, output_hidden_states=True)
            # "We are only ALWAYS interested in the pooled output of the final text encoder": the
            # pipeline keeps the first 2-D output it sees, which is the projection model's text_embeds.
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return torch.concat(hidden, dim=-1), pooled
