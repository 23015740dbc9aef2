"""Loading a diffusers few-step pipeline into its backbone adapter, and sampling it with the Q-Sched
sampler (PyTorch side).

Supported: the pipeline classes of `qsched_export.backbones` (SD-class and SDXL-class UNet
pipelines, FLUX-class transformers), with any scheduler a sampler family covers, optionally with
LoRAs fused in (`qsched_export.lora`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from qsched_export.backbones import Backbone, ModelSource, backbone_class
from qsched_export.errors import QSchedError
from qsched_export.lora import LoraSpec, fuse_loras
from qsched_export.sampler import FAMILIES, QSchedCoefficients, SamplerPlan, family_for_scheduler, sample_loop

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_MODEL = SAMPLES_DIR / "shapes-sd"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(model: str | None) -> str:
    """`None` means the embedded sample; a path must be a diffusers folder; anything else is a hub id."""
    if model is None:
        if not (SAMPLE_MODEL / "model_index.json").is_file():
            # A wheel or `pip install .` does not carry samples/ (27 MB of weights): it ships with the source.
            raise QSchedError("the embedded sample is not installed (it ships in the source repository's samples/ folder)",
                              "clone the repository and pip install -e it, or pass --model PATH_OR_HUB_ID")
        return str(SAMPLE_MODEL)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise QSchedError(f"{model} is not a diffusers pipeline folder (no model_index.json)", "pass a folder written by save_pretrained, or a hub id")
        return str(path)
    if not _HUB_ID.match(model):
        raise QSchedError(f"model folder {model} not found", "pass an existing diffusers folder or a hub id such as org/name")
    return model


def _model_source(model: str | None, resolved: str, loras: tuple[LoraSpec, ...]) -> ModelSource:
    """The id recorded for `model` (`resolved` by `resolve_model`): our samples as `samples/<name>`,
    whatever path reached them, anything else as given."""
    path = Path(resolved)
    sample = path.exists() and path.resolve().parent == SAMPLES_DIR.resolve()
    return ModelSource(f"samples/{path.resolve().name}" if sample else str(model), sample, tuple(loras))


def load_pipeline(model: str | None = None, *, scheduler: str | None = None, loras: Sequence[LoraSpec] = (), trust_remote_code: bool = False):
    """Load a diffusers pipeline in float32 on the CPU, safely: safetensors only (no pickle) and no
    remote code unless `trust_remote_code`. `scheduler` swaps the scheduler by family or class name;
    `loras` are fused into the weights. Returns `(pipe, ModelSource)`."""
    from diffusers import DiffusionPipeline

    source = resolve_model(model)
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QSchedError(f"could not load {source}: {first}", "pass a local diffusers folder with safetensors weights (--model PATH)") from None
    backbone_class(type(pipe).__name__)  # an unsupported class names the supported ones
    if scheduler is not None:
        pipe.scheduler = _swap_scheduler(pipe.scheduler, scheduler)
    family_for_scheduler(pipe.scheduler)  # fail early on an unsupported scheduler
    pipe.set_progress_bar_config(disable=True)
    fused = fuse_loras(pipe, tuple(loras))
    return pipe, _model_source(model, source, fused)


def open_backbone(model: str | None = None, *, scheduler: str | None = None, loras: Sequence[LoraSpec] = (), guidance: float | None = None,
                  height: int | None = None, width: int | None = None, negative_prompt: str = "", text_length: int | None = None,
                  trust_remote_code: bool = False) -> Backbone:
    """Load `model` and wrap it in its backbone adapter with the run's settings resolved."""
    pipe, source = load_pipeline(model, scheduler=scheduler, loras=loras, trust_remote_code=trust_remote_code)
    backbone = backbone_class(type(pipe).__name__)(pipe, source, guidance_scale=guidance, height=height, width=width,
                                                   negative_prompt=negative_prompt, text_length=text_length)
    family = family_for_scheduler(pipe.scheduler).NAME
    if family not in backbone.FAMILIES:
        raise QSchedError(f"{type(pipe).__name__} with {type(pipe.scheduler).__name__} ({family}) is not a combination we cover",
                          f"use a scheduler of the {', '.join(backbone.FAMILIES)} family (--scheduler)")
    return backbone


def _swap_scheduler(current, name: str):
    import diffusers

    family = FAMILIES.get(name)
    cls_name = family.SCHEDULER_CLASSES[0] if family else name
    allowed = {c for f in FAMILIES.values() for c in f.SCHEDULER_CLASSES}
    if cls_name not in allowed:
        raise QSchedError(f"unknown scheduler {name!r}", f"use a family ({', '.join(FAMILIES)}) or a class ({', '.join(sorted(allowed))})")
    return getattr(diffusers, cls_name).from_config(current.config)


def draw_noise(plan: SamplerPlan, shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Draw the initial latent and each step's noise in the order diffusers' pipelines draw them
    from one generator, so a seed gives the stock pipeline's image."""
    latents = torch.randn(shape, generator=generator, dtype=torch.float32)
    noises = [torch.randn(shape, generator=generator, dtype=torch.float32) if plan.noise_steps[i] else None for i in range(plan.num_steps)]
    return latents, noises


def denoise_fn(denoiser: torch.nn.Module, cond):
    """The sampler's `denoise(model_input, timestep, step_index)` over a backbone denoiser and its conditioning."""
    tensors = tuple(cond.tensors.values())

    def run(model_input: torch.Tensor, timestep: float, _i: int) -> torch.Tensor:
        # On the latent's device: the UNet moves a CPU timestep itself, FLUX's transformer does not.
        return denoiser(model_input, torch.tensor(timestep, device=model_input.device), *tensors)
    return run


def generate(backbone: Backbone, prompts: list[str], *, steps: int, seed: int, coefficients: QSchedCoefficients | None = None,
             gamma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `prompts` with the Q-Sched sampler; returns `(final_latents, images in [0, 1])`."""
    plan = backbone.plan(steps, **({"gamma": gamma} if gamma is not None else {}))
    if coefficients is not None:
        coefficients.check_steps(plan.num_steps)
    cond = backbone.encode(prompts)
    latents, noises = draw_noise(plan, backbone.latent_shape(len(prompts)), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        final = sample_loop(denoise_fn(backbone.denoiser(), cond), plan, latents, noises,
                            coefficients.latent_coeff if coefficients else None, coefficients.output_coeff if coefficients else None)
    return final, backbone.decode(final)


def to_pil(images: torch.Tensor):
    from PIL import Image

    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]
