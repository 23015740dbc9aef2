"""Loading a diffusers few-step pipeline and sampling it with the Q-Sched sampler (PyTorch side).

Supported backbones: UNet2DConditionModel text-to-image pipelines (`StableDiffusionPipeline` and
`LatentConsistencyModelPipeline`, e.g. SD1.5 with LCM/TCD/PCM weights, and our embedded sample),
with any scheduler our sampler families cover.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from qsched_export.errors import QSchedError
from qsched_export.sampler import FAMILIES, SamplerPlan, family_for_scheduler, make_plan, sample_loop

SAMPLE_MODEL = Path(__file__).resolve().parents[1] / "samples" / "shapes-sd"
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "LatentConsistencyModelPipeline")
# The embedded sample samples best at guidance 1.5 (benchmarks/results/quality_guidance3.json
# sweeps 1.5-5); other models get StableDiffusionPipeline.__call__'s default.
SAMPLE_GUIDANCE = 1.5
DIFFUSERS_GUIDANCE = 7.5
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str | None) -> str:
    """`None` means the embedded sample; a path must be a diffusers folder; anything else is a hub id."""
    if model is None:
        if not (SAMPLE_MODEL / "model_index.json").is_file():
            raise QSchedError(f"the embedded sample is missing at {SAMPLE_MODEL}", "pass --model PATH_OR_HUB_ID")
        return str(SAMPLE_MODEL)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise QSchedError(f"{model} is not a diffusers pipeline folder (no model_index.json)", "pass a folder written by save_pretrained, or a hub id")
        return str(path)
    if not _HUB_ID.match(model):
        raise QSchedError(f"model folder {model} not found", "pass an existing diffusers folder or a hub id such as org/name")
    return model


def default_guidance(model: str | None) -> float:
    return SAMPLE_GUIDANCE if model is None else DIFFUSERS_GUIDANCE


def load_pipeline(model: str | None = None, *, scheduler: str | None = None, trust_remote_code: bool = False):
    """Load a diffusers pipeline in float32 on the CPU, safely: safetensors only (no pickle) and no
    remote code unless `trust_remote_code`. `scheduler` swaps the scheduler by family or class name."""
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
    try:
        pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QSchedError(f"could not load {source}: {first}", "pass a local diffusers folder with safetensors weights (--model PATH)") from exc
    name = type(pipe).__name__
    if name not in SUPPORTED_PIPELINES:
        raise QSchedError(f"pipeline class {name} is not supported yet", f"use one of {', '.join(SUPPORTED_PIPELINES)}")
    if scheduler is not None:
        pipe.scheduler = _swap_scheduler(pipe.scheduler, scheduler)
    family_for_scheduler(pipe.scheduler)  # fail early on an unsupported scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _swap_scheduler(current, name: str):
    import diffusers

    family = FAMILIES.get(name)
    cls_name = family.SCHEDULER_CLASSES[0] if family else name
    allowed = {c for f in FAMILIES.values() for c in f.SCHEDULER_CLASSES}
    if cls_name not in allowed:
        raise QSchedError(f"unknown scheduler {name!r}", f"use a family ({', '.join(FAMILIES)}) or a class ({', '.join(sorted(allowed))})")
    return getattr(diffusers, cls_name).from_config(current.config)


@dataclass
class Conditioning:
    """Text conditioning for the denoiser: `context` is `(2B, L, D)` [negative; positive] with
    classifier-free guidance, else `(B, L, D)`; `timestep_cond` is LCM's guidance embedding."""

    context: torch.Tensor
    timestep_cond: torch.Tensor | None
    batch_size: int


class UNetDenoiser(torch.nn.Module):
    """The model output the sampler sees: the UNet with classifier-free guidance folded in,
    exactly as `StableDiffusionPipeline.__call__` combines it."""

    def __init__(self, unet, guidance_scale: float):
        super().__init__()
        self.unet = unet
        self.guidance_scale = float(guidance_scale)
        self.do_cfg = guidance_scale > 1 and unet.config.time_cond_proj_dim is None

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        model_input = torch.cat([sample] * 2) if self.do_cfg else sample
        out = self.unet(model_input, timestep, encoder_hidden_states=context, timestep_cond=timestep_cond, return_dict=False)[0]
        if self.do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.guidance_scale * (text - uncond)
        return out


def encode_prompts(pipe, prompts: list[str], guidance_scale: float, negative_prompt: str | None = None, device: str = "cpu") -> Conditioning:
    """Text conditioning (negative first with CFG), on `device` (the CPU by default: calibration and
    export encode once and move the result)."""
    for p in prompts:
        if not p.strip():
            raise QSchedError("empty prompt", "pass a non-empty --prompt")
    denoiser = UNetDenoiser(pipe.unet, guidance_scale)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompts, torch.device(device), 1, denoiser.do_cfg, [negative_prompt or ""] * len(prompts) if denoiser.do_cfg else None)
    context = torch.cat([neg, pos]) if denoiser.do_cfg else pos
    timestep_cond = None
    if pipe.unet.config.time_cond_proj_dim is not None:
        w = torch.tensor(guidance_scale - 1).repeat(len(prompts))
        timestep_cond = pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=pos.device, dtype=pos.dtype)
    return Conditioning(context, timestep_cond, len(prompts))


def latent_shape(pipe, batch_size: int, height: int | None, width: int | None) -> tuple[int, int, int, int]:
    scale = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * scale
    width = width or pipe.unet.config.sample_size * scale
    if height % scale or width % scale:
        raise QSchedError(f"height and width must be multiples of {scale}, got {height}x{width}", f"pass sizes divisible by {scale}")
    return (batch_size, pipe.unet.config.in_channels, height // scale, width // scale)


def draw_noise(plan: SamplerPlan, shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Draw the initial latent and each step's noise in the order diffusers' pipelines draw them
    from one generator, so a seed gives the stock pipeline's image."""
    latents = torch.randn(shape, generator=generator, dtype=torch.float32)
    noises = [torch.randn(shape, generator=generator, dtype=torch.float32) if plan.noise_steps[i] else None for i in range(plan.num_steps)]
    return latents, noises


def denoise_fn(denoiser: UNetDenoiser, cond: Conditioning):
    def run(model_input: torch.Tensor, timestep: float, _i: int) -> torch.Tensor:
        return denoiser(model_input, torch.tensor(timestep), cond.context, cond.timestep_cond)
    return run


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode to images in [0, 1], `(B, 3, H, W)`, as the pipeline's post-processing does."""
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)


def generate(pipe, prompts: list[str], *, steps: int, guidance_scale: float, seed: int, latent_coeff=None, output_coeff=None,
             height: int | None = None, width: int | None = None, gamma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `prompts` with the Q-Sched sampler; returns `(final_latents, images in [0, 1])`."""
    plan = make_plan(pipe.scheduler, steps, **({"gamma": gamma} if gamma is not None else {}))
    cond = encode_prompts(pipe, prompts, guidance_scale)
    latents, noises = draw_noise(plan, latent_shape(pipe, len(prompts), height, width), torch.Generator().manual_seed(seed))
    denoiser = UNetDenoiser(pipe.unet, guidance_scale)
    with torch.no_grad():
        final = sample_loop(denoise_fn(denoiser, cond), plan, latents, noises, latent_coeff, output_coeff)
    return final, decode_latents(pipe, final)


def to_pil(images: torch.Tensor):
    from PIL import Image

    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]
