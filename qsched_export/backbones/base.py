"""What every backbone adapter provides, and the pieces they share.

A backbone adapter wraps one loaded diffusers pipeline of its family and is the only code that
knows the family's components: how prompts become named conditioning tensors, how the denoiser
is called (classifier-free guidance folded in, constant inputs baked in), the latent shape and
any packing, the decode, and the I/O names of each exported graph. Calibration, fake-quant,
golden data and the exporter talk to the adapter only.

The conditioning contract (the text graph's outputs = the denoise graph's inputs):
`Backbone.encode(prompts)` returns the POSITIVE prompts' tensors, batch first. Everything that does
not depend on the prompt (the negative prompt's embeddings for CFG, LCM's guidance embedding,
SDXL's time ids, FLUX's position ids and guidance) lives in the denoiser module as buffers,
broadcast over the batch at call time, so the exported denoise graph carries them as constants
and a runtime only tokenizes, encodes and denoises.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from qsched_export.errors import QSchedError
from qsched_export.sampler import SamplerPlan, make_plan

# The denoise graph's inputs besides the conditioning, and the decoder's input.
LATENTS, NOISE, FINAL_LATENTS, FIRST_LATENTS, IMAGE = "latents", "noise", "final_latents", "first_latents", "image"


@dataclass(frozen=True)
class Conditioning:
    """The positive prompts' conditioning tensors by name (batch first, `batch_size` rows)."""

    tensors: dict[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def to(self, device) -> "Conditioning":
        return Conditioning({k: v.to(device) for k, v in self.tensors.items()})

    def repeat(self, times: int) -> "Conditioning":
        """Each tensor repeated `times` along the batch (candidate-major, as the calibration batches)."""
        return Conditioning({k: v.repeat(times, *([1] * (v.ndim - 1))) for k, v in self.tensors.items()})


@dataclass(frozen=True)
class TokenizerRole:
    """One of the pipeline's tokenizers: its attribute name on the pipeline, the text graph's input
    name for its ids, and the length it pads to."""

    attr: str
    input_name: str
    max_length: int


@dataclass(frozen=True)
class ModelSource:
    """Where a pipeline came from: `id` as recorded in qsched.json and manifests (the embedded
    samples as `samples/<name>`), whether it is one of our embedded samples, and the LoRAs fused
    into it (`qsched_export.lora.LoraSpec`)."""

    id: str
    sample: bool = False
    loras: tuple = ()


@dataclass(frozen=True)
class Guidance:
    """The guidance scale a run uses and why (printed, so a user sees which default applied)."""

    scale: float
    reason: str


class HalfPrecision(nn.Module):
    """Runs a float16 copy of a backbone model with float32 inputs and outputs, so the sampler,
    classifier-free guidance and every step constant stay float32 (as diffusers' schedulers upcast)
    and only the network runs in float16. Calibration and export both use it: the fp16 numerics
    calibrated are the ones exported (fp16 initializers and Casts in the graph, as TensorRT's
    strongly typed networks need). Adapters call the model with keyword arguments only; the
    `timestep` stays float32, as the pipelines pass it (the models cast it themselves)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()
        self.config = model.config

    def forward(self, **kwargs):
        half = {k: v if k == "timestep" else _to_dtype(v, torch.float16) for k, v in kwargs.items()}
        return (self.model(**half)[0].float(),)


def half_copy(model: nn.Module) -> nn.Module:
    """`copy.deepcopy(model).half()` without the float32 copy in between: each floating parameter
    and buffer is copied straight to float16 (deepcopy takes them from its memo; `copy=True`, so a
    tensor that already is float16 is not shared). For a 12 B model the copy never holds 48 GB."""
    memo = {}
    for p in model.parameters():
        if p.is_floating_point():
            memo[id(p)] = nn.Parameter(p.detach().to(torch.float16, copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        if b.is_floating_point():
            memo[id(b)] = b.detach().to(torch.float16, copy=True)
    return copy.deepcopy(model, memo)


def _to_dtype(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_dtype(v, dtype) for k, v in value.items()}
    return value


def on_device_of(model: nn.Module, module: nn.Module) -> nn.Module:
    """`module` (a denoiser holding constant buffers made on the CPU) on the device of `model`'s weights."""
    return module.to(next(model.parameters()).device)


def expand_batch(constant: torch.Tensor, batch: int) -> torch.Tensor:
    """A `(1, ...)` constant as `batch` identical rows (a view: bit-identical to a repeat)."""
    return constant.expand(batch, *constant.shape[1:])


class Backbone(abc.ABC):
    """One loaded pipeline of a family, with the run's settings resolved (guidance, image size).

    Args:
        pipe: the diffusers pipeline (float32).
        source: where it came from (`ModelSource`).
        guidance_scale: classifier-free guidance (or the distilled guidance input); None = `default_guidance()`.
        height, width: image size; None = the model's default.
        negative_prompt: the negative prompt with classifier-free guidance (baked into the denoiser).
        text_length: the T5 tokenizer's padded length (T5-conditioned backbones only; None = the model's).
    """

    NAME: ClassVar[str]
    PIPELINE_CLASSES: ClassVar[tuple[str, ...]]
    MODEL_ATTR: ClassVar[str]  # the component that is quantized and unrolled: "unet" or "transformer"
    # Layers kept in float (regexes searched in each module's dotted name), see quant.DEFAULT_SKIP_PATTERNS.
    SKIP_PATTERNS: ClassVar[tuple[str, ...]]
    # Names of the conditioning tensors: the text graph's outputs, the denoise graph's inputs.
    COND_NAMES: ClassVar[tuple[str, ...]]
    # The sampler families this backbone's pipelines are known to run with.
    FAMILIES: ClassVar[tuple[str, ...]]

    def __init__(self, pipe, source: ModelSource, *, guidance_scale: float | None = None, height: int | None = None,
                 width: int | None = None, negative_prompt: str = "", text_length: int | None = None):
        self.pipe = pipe
        self.source = source
        self.settings = {"guidance_scale": guidance_scale, "height": height, "width": width, "negative_prompt": negative_prompt,
                         "text_length": text_length}
        self.text_length = self._text_length(text_length)
        self.guidance = Guidance(float(guidance_scale), "given") if guidance_scale is not None else self.default_guidance()
        if not (self.guidance.scale >= 0 and self.guidance.scale < float("inf")):
            raise QSchedError(f"guidance must be a finite number >= 0, got {self.guidance.scale}", "pass e.g. --guidance 1.5")
        self.height, self.width = self._image_size(height, width)
        self.negative_prompt = negative_prompt

    # -- settings ---------------------------------------------------------------------------
    def with_settings(self, **changes) -> "Backbone":
        """The same pipeline with other run settings (e.g. another guidance for a sweep)."""
        return type(self)(self.pipe, self.source, **{**self.settings, **changes})

    def _text_length(self, text_length: int | None) -> int | None:
        if text_length is not None:
            raise QSchedError(f"--max-sequence-length applies to T5-conditioned models (FLUX), not {type(self.pipe).__name__}",
                              "drop --max-sequence-length")
        return None

    @property
    def model(self) -> nn.Module:
        return getattr(self.pipe, self.MODEL_ATTR)

    @abc.abstractmethod
    def default_guidance(self) -> Guidance:
        """The model's own guidance default, with the reason."""

    @property
    @abc.abstractmethod
    def do_cfg(self) -> bool:
        """Whether the denoiser runs classifier-free guidance (two model passes per step)."""

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def _default_size(self) -> int:
        return int(self.model.config.sample_size) * self.vae_scale_factor

    def _size_multiple(self) -> int:
        return self.vae_scale_factor

    def _image_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        height = height or self._default_size()
        width = width or self._default_size()
        multiple = self._size_multiple()
        for name, value in (("height", height), ("width", width)):
            if value < multiple:
                raise QSchedError(f"{name} must be at least {multiple}, got {value}", f"pass --{name} {self._default_size()} (the model's size)")
            if value % multiple:
                raise QSchedError(f"{name} must be a multiple of {multiple} for this model, got {value}",
                                  f"pass --{name} {value - value % multiple or multiple}")
        return height, width

    def plan(self, steps: int, **options) -> SamplerPlan:
        """The sampler's per-step constants for `steps`, as this pipeline's `__call__` sets them."""
        return make_plan(self.pipe.scheduler, steps, **options)

    @abc.abstractmethod
    def latent_shape(self, batch: int) -> tuple[int, ...]:
        """The shape of the standard-normal latent the sampler starts from (what a seed draws)."""

    # -- text side --------------------------------------------------------------------------
    @abc.abstractmethod
    def tokenizer_roles(self) -> tuple[TokenizerRole, ...]:
        """The pipeline's tokenizers, in the order the text graph takes their ids."""

    def token_ids(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Ids as the pipeline's `encode_prompt` makes them: padded to each tokenizer's length, truncated."""
        ids = {}
        for role in self.tokenizer_roles():
            tok = getattr(self.pipe, role.attr)
            ids[role.input_name] = tok(texts, padding="max_length", max_length=role.max_length, truncation=True, return_tensors="pt").input_ids
        return ids

    @abc.abstractmethod
    def text_module(self) -> nn.Module:
        """The text encoders as one module: ids (positional, `tokenizer_roles()` order) -> a tuple of
        the conditioning tensors in `COND_NAMES` order. Exported as the text graph."""

    def scheme_text_module(self, scheme):
        """The text module with a scheme's text-encoder weights (`Scheme.text_scheme`): the
        pipeline's own for float, else a copy whose every Linear holds the weight-only fake-quant
        (the denoiser's skip list names no text-encoder layer). Returns `(module, QuantReport)`."""
        from qsched_export.quant import get_scheme, quantize_model

        text_scheme = get_scheme(scheme).text_scheme
        module = copy.deepcopy(self.text_module()) if text_scheme.quantized else self.text_module()
        return module, quantize_model(module, text_scheme, skip=())

    def encode(self, prompts: list[str], device: str | torch.device = "cpu", text: nn.Module | None = None) -> Conditioning:
        """The positive prompts' conditioning (the exported text graph's computation, run eagerly).
        `text`: the text module to run (default: `text_module()`; the exporter passes `scheme_text_module`'s)."""
        for p in prompts:
            if not p.strip():
                raise QSchedError("empty prompt", "pass a non-empty prompt")
        return Conditioning(self._encode(prompts, text)).to(device)

    def _encode(self, texts: list[str], module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        ids = self.token_ids(texts)
        module = module if module is not None else self.text_module()
        device = next(module.parameters()).device
        with torch.no_grad():
            outputs = module(*(ids[r.input_name].to(device) for r in self.tokenizer_roles()))
        return dict(zip(self.COND_NAMES, outputs))

    # -- denoiser ---------------------------------------------------------------------------
    @abc.abstractmethod
    def denoiser(self, model: nn.Module | None = None) -> nn.Module:
        """`(sample, timestep, *conditioning in COND_NAMES order) -> model output`, with CFG and the
        constant inputs folded in. `model`: a quantized or half-precision copy (default: the pipeline's)."""

    def scheme_model(self, scheme, model: nn.Module | None = None):
        """The backbone model with a scheme's numerics: a copy (unless fp32), in float16 for fp16
        schemes, with fake-quant layers for quantized ones. Returns `(model, QuantReport)`.
        `model`: a float copy to convert in place (e.g. one SmoothQuant smoothed)."""
        from qsched_export.quant import get_scheme, quantize_model

        scheme = get_scheme(scheme)
        if model is None:
            if scheme.quantized:
                model = copy.deepcopy(self.model)
            elif scheme.float_dtype == "float16":
                model = half_copy(self.model)
            else:
                model = self.model
        if scheme.float_dtype == "float16":
            model = HalfPrecision(model)
        return model, quantize_model(model, scheme, skip=self.SKIP_PATTERNS)

    # -- decode -----------------------------------------------------------------------------
    def decoder_module(self) -> nn.Module:
        """final latents -> image in [0, 1] (the VAE with the pipeline's latent scaling and post-processing)."""
        return VaeDecoder(self.pipe.vae)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder_module()(latents)

    def describe(self) -> str:
        return f"{type(self.pipe).__name__} ({self.NAME} backbone), guidance {self.guidance.scale:g} ({self.guidance.reason})"


class VaeDecoder(nn.Module):
    """latents -> image in [0, 1], as the pipelines' post-processing does: undo the latent
    normalisation (`latents_mean`/`latents_std` when the VAE config has them, else divide by
    `scaling_factor`, then add `shift_factor` when set), decode, `(x / 2 + 0.5).clamp(0, 1)`."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        self.normalised = mean is not None and std is not None
        if self.normalised:
            self.register_buffer("latents_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("latents_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # The same expressions as the pipelines (divide, not multiply by 1/sf), for the same float32 bits.
        if self.normalised:
            latents = latents * self.latents_std / self.scaling_factor + self.latents_mean
        else:
            latents = latents / self.scaling_factor
            if self.shift_factor:
                latents = latents + self.shift_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)
