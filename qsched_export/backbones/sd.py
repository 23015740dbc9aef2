"""Stable Diffusion 1.x/2.x-class UNet pipelines (`StableDiffusionPipeline`, `LatentConsistencyModelPipeline`):
one CLIP text encoder, `UNet2DConditionModel` with cross-attention on its last hidden state.

Numerics follow `StableDiffusionPipeline.__call__`: the text encoder's `last_hidden_state`, the
UNet on `[negative; positive]` with classifier-free guidance, `uncond + g (text - uncond)`, and
LCM's guidance embedding `w = g - 1` when the UNet has one (then no CFG).
"""

from __future__ import annotations

import torch
from torch import nn

from qsched_export.backbones.base import Backbone, Guidance, TokenizerRole, expand_batch, on_device_of
from qsched_export.quant import DEFAULT_SKIP_PATTERNS

NAME = "sd"
# The embedded sample samples best at guidance 1.5 (docs/RESULTS.md, guidance sweep).
SAMPLE_GUIDANCE = 1.5
# LatentConsistencyModelPipeline.__call__'s default, fed to a guidance-embedding UNet as w = g - 1.
LCM_GUIDANCE = 8.5
# LoRA-distilled few-step checkpoints (LCM-LoRA, TCD, PCM, Hyper-SD) sample with guidance 0-1.
LORA_GUIDANCE = 1.0


class SDBackbone(Backbone):
    NAME = NAME
    PIPELINE_CLASSES = ("StableDiffusionPipeline", "LatentConsistencyModelPipeline")
    MODEL_ATTR = "unet"
    SKIP_PATTERNS = DEFAULT_SKIP_PATTERNS
    COND_NAMES = ("context",)
    FAMILIES = ("lcm", "tcd", "euler_a")
    PIPELINE_GUIDANCE = 7.5  # StableDiffusionPipeline.__call__'s default

    @property
    def guidance_embedding(self) -> bool:
        return self.pipe.unet.config.time_cond_proj_dim is not None

    def default_guidance(self) -> Guidance:
        if self.guidance_embedding:
            return Guidance(LCM_GUIDANCE, "the UNet has a guidance embedding (LCM-distilled): LatentConsistencyModelPipeline's default")
        if self.source.sample:
            return Guidance(SAMPLE_GUIDANCE, "the embedded sample's calibrated guidance")
        if self.source.loras:
            return Guidance(LORA_GUIDANCE, "a LoRA-distilled few-step checkpoint samples without classifier-free guidance")
        return Guidance(self.PIPELINE_GUIDANCE, f"{type(self.pipe).__name__}'s default")

    @property
    def do_cfg(self) -> bool:
        return self.guidance.scale > 1 and not self.guidance_embedding

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        scale = self.vae_scale_factor
        return (batch, int(self.pipe.unet.config.in_channels), self.height // scale, self.width // scale)

    def tokenizer_roles(self) -> tuple[TokenizerRole, ...]:
        return (TokenizerRole("tokenizer", "input_ids", int(self.pipe.tokenizer.model_max_length)),)

    def text_module(self) -> nn.Module:
        return _ClipText(self.pipe.text_encoder)

    def negative_conditioning(self) -> dict[str, torch.Tensor]:
        """The negative prompt's conditioning, `(1, ...)` each, for classifier-free guidance (the
        pipeline encodes `""` when no negative prompt is given)."""
        return self._encode([self.negative_prompt])

    def guidance_embedding_input(self) -> torch.Tensor | None:
        """LCM's `timestep_cond`, `(1, D)`, as the pipeline computes it (None without a guidance embedding)."""
        if not self.guidance_embedding:
            return None
        w = torch.tensor(self.guidance.scale - 1).repeat(1)
        return self.pipe.get_guidance_scale_embedding(w, embedding_dim=self.pipe.unet.config.time_cond_proj_dim).to(dtype=torch.float32)

    def denoiser(self, model: nn.Module | None = None) -> nn.Module:
        model = model if model is not None else self.pipe.unet
        return on_device_of(model, UNetDenoiser(model, self.guidance.scale, self.do_cfg,
                            self.negative_conditioning() if self.do_cfg else None, self.guidance_embedding_input(), self.COND_NAMES))


class _ClipText(nn.Module):
    """CLIPTextModel -> last_hidden_state, as `StableDiffusionPipeline.encode_prompt` takes it
    (no attention mask: SD's text encoders are called without one unless their config asks)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.text_encoder(input_ids, return_dict=False)[0],)


class UNetDenoiser(nn.Module):
    """The model output the sampler sees: `UNet2DConditionModel` with classifier-free guidance and
    the constant inputs folded in, exactly as the SD/SDXL pipelines combine them.

    Args:
        unet: the UNet (or a quantized / `HalfPrecision` copy).
        guidance_scale: g in `uncond + g (text - uncond)`.
        do_cfg: run the negative and positive halves in one batch and combine them.
        negative: the negative prompt's conditioning by name, `(1, ...)` each (with `do_cfg`).
        timestep_cond: LCM's guidance embedding, `(1, D)`, or None.
        cond_names: the conditioning's names, in the order `forward` takes them.
        added_cond: SDXL's constant `added_cond_kwargs` entries, `(1, ...)` each (e.g. `time_ids`);
            the prompt-dependent ones (`text_embeds`) come as conditioning named in `added_cond_names`.
    """

    def __init__(self, unet: nn.Module, guidance_scale: float, do_cfg: bool, negative: dict[str, torch.Tensor] | None,
                 timestep_cond: torch.Tensor | None, cond_names: tuple[str, ...], added_cond: dict[str, torch.Tensor] | None = None,
                 added_cond_names: tuple[str, ...] = ()):
        super().__init__()
        self.unet = unet
        self.guidance_scale = float(guidance_scale)
        self.do_cfg = do_cfg
        self.cond_names = cond_names
        self.added_cond_names = added_cond_names
        self.negative_names = tuple(negative or ())
        for k, v in (negative or {}).items():
            self.register_buffer(f"negative_{k}", v, persistent=False)
        self.register_buffer("timestep_cond", timestep_cond, persistent=False)
        self.added_cond_const = tuple(added_cond or ())
        for k, v in (added_cond or {}).items():
            self.register_buffer(f"added_{k}", v, persistent=False)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        tensors = dict(zip(self.cond_names, cond))
        if self.do_cfg:
            sample = torch.cat([sample] * 2)
            tensors = {k: torch.cat([expand_batch(getattr(self, f"negative_{k}"), batch), v]) for k, v in tensors.items()}
        rows = sample.shape[0]
        kwargs = {}
        if self.timestep_cond is not None:
            kwargs["timestep_cond"] = expand_batch(self.timestep_cond, rows)
        if self.added_cond_const or self.added_cond_names:
            kwargs["added_cond_kwargs"] = {**{k: tensors.pop(k) for k in self.added_cond_names},
                                           **{k: expand_batch(getattr(self, f"added_{k}"), rows) for k in self.added_cond_const}}
        out = self.unet(sample=sample, timestep=timestep, encoder_hidden_states=tensors["context"], return_dict=False, **kwargs)[0]
        if self.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.guidance_scale * (text - uncond)
        return out
