"""Tiny diffusers pipelines built in code with random weights and our own tokenizers (no downloads),
the way diffusers' own pipeline tests build them (`get_dummy_components`). One home for the tests
and the benchmarks: `save_tiny_sd`, `save_tiny_sdxl`, `save_tiny_flux` write a pipeline folder
with `save_pretrained` that `DiffusionPipeline.from_pretrained` loads like any model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "background", "two", "small"]
_CHARS = list(string.ascii_lowercase + string.digits + ".,!?'-")
SCHEDULER_KWARGS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def write_clip_tokenizer(folder: Path, max_length: int = 16, pad_token: str = "<|endoftext|>") -> None:
    """A CLIP BPE tokenizer with a character vocabulary: every word splits into letters. SDXL's
    second tokenizer pads with `!` (id 2 here), not with eos: pass `pad_token="!"`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + _CHARS + [c + "</w>" for c in _CHARS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token,
    }))


def clip_tokenizer(folder: Path, **kwargs):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder, **kwargs)
    return CLIPTokenizer.from_pretrained(folder)


def t5_tokenizer(max_length: int = 12):
    """A T5-style unigram tokenizer over characters: `<pad>`=0, `</s>`=1, `<unk>`=2, no bos, `</s>`
    appended by the post-processor, as T5TokenizerFast behaves."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -3.0) for c in _CHARS] + [("\u2581" + c, -2.5) for c in _CHARS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=max_length)


def _clip_text_config(**overrides):
    from transformers import CLIPTextConfig

    config = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                  num_hidden_layers=2, vocab_size=80, max_position_embeddings=16)
    return CLIPTextConfig(**{**config, **overrides})


def _scheduler(scheduler_cls: str, prediction_type: str):
    import diffusers

    kwargs = dict(SCHEDULER_KWARGS, prediction_type=prediction_type)
    if scheduler_cls == "EulerAncestralDiscreteScheduler":
        kwargs["timestep_spacing"] = "trailing"
    return getattr(diffusers, scheduler_cls)(**kwargs)


def _vae(latent_channels: int = 4, **overrides):
    from diffusers import AutoencoderKL

    config = dict(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
    torch.manual_seed(0)
    return AutoencoderKL(**{**config, **overrides})


def tiny_sd_components(scheduler_cls: str = "LCMScheduler", prediction_type: str = "epsilon", time_cond_proj_dim: int | None = None) -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4, time_cond_proj_dim=time_cond_proj_dim,
    )
    vae = _vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config())
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": _scheduler(scheduler_cls, prediction_type)}


def save_tiny_sd(folder: Path, **kwargs) -> Path:
    """Save a tiny StableDiffusionPipeline (safetensors) to `folder` and return it."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(**kwargs), tokenizer=clip_tokenizer(folder / "_tok"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_sdxl_components(scheduler_cls: str = "EulerAncestralDiscreteScheduler", prediction_type: str = "epsilon",
                         time_cond_proj_dim: int | None = None) -> dict:
    """diffusers' SDXL test components, sized down: two CLIP encoders (the second with projection),
    a UNet with "text_time" added conditioning (6 time ids x 8 + the 16-wide text_embeds)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4, time_cond_proj_dim=time_cond_proj_dim,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 16, cross_attention_dim=32, norm_num_groups=4,
    )
    vae = _vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config())
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(projection_dim=16))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "scheduler": _scheduler(scheduler_cls, prediction_type)}


def save_tiny_sdxl(folder: Path, **kwargs) -> Path:
    """Save a tiny StableDiffusionXLPipeline (its second tokenizer pads with `!`, as SDXL's does)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(**kwargs), tokenizer=clip_tokenizer(folder / "_tok"),
                                     tokenizer_2=clip_tokenizer(folder / "_tok2", pad_token="!"))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_flux_components(guidance_embeds: bool = False, shift: float = 1.0, use_dynamic_shifting: bool = False) -> dict:
    """diffusers' FLUX test components, sized down: double- and single-stream blocks with RoPE, a
    pooled CLIP projection, a small T5 encoder, a 4-channel VAE with FLUX's scaling and shift factors."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    # Width 32 (2 heads of 16): every quantized Linear's input is a multiple of the INT4 block of 32,
    # as in FLUX.1 (the single blocks' proj_out takes width + 4 x width).
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6),
                                         guidance_embeds=guidance_embeds)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config())
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=88, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                             relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    vae = _vae(sample_size=16, shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=use_dynamic_shifting)
    return {"transformer": transformer, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "vae": vae, "scheduler": scheduler}


def save_tiny_flux(folder: Path, **kwargs) -> Path:
    """Save a tiny FluxPipeline (16x16 images: 8x8 latents packed into 16 tokens)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_flux_components(**kwargs), tokenizer=clip_tokenizer(folder / "_tok"), tokenizer_2=t5_tokenizer())
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny open_clip judge built from a config in code, saved in open_clip's local-dir layout."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {"size": 32}}))
    return folder


def save_full_size_sdxl(folder: Path, *, small: bool = False) -> Path:
    """An SDXL pipeline whose UNet has SDXL-base's architecture (2.6 B parameters, 128x128 latent =
    1024x1024 px) with random weights, one-layer text encoders of SDXL's widths (context 768 + 1280,
    pooled 1280) and a narrow 4-block VAE (scale factor 8): the benchmarks time and size the UNet.
    SDXL-Turbo's sampler (Euler-ancestral, trailing). `small`: the same shapes at 1/8 width, to test it."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    w = 8 if small else 1
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320 // w, 640 // w, 1280 // w),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048 // w, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256 // w, projection_class_embeddings_input_dim=6 * 256 // w + 1280 // w, norm_num_groups=32 // w,
    )
    text = _clip_text_config(hidden_size=768 // w, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77)
    text_2 = _clip_text_config(hidden_size=1280 // w, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                               max_position_embeddings=77, projection_dim=1280 // w)
    torch.manual_seed(0)
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_vae(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024),
        text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text_2),
        tokenizer=clip_tokenizer(folder / "_tok", max_length=77), tokenizer_2=clip_tokenizer(folder / "_tok2", max_length=77, pad_token="!"),
        scheduler=EulerAncestralDiscreteScheduler(**SCHEDULER_KWARGS, timestep_spacing="trailing"))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_full_width_flux(folder: Path, *, double: int = 2, single: int = 4, small: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """A FluxPipeline whose transformer has FLUX.1's width and block structure (hidden 3072 = 24
    heads x 128, RoPE (16, 56, 56), T5 width 4096, pooled CLIP 768) at reduced depth (`double`
    + `single` blocks; FLUX.1 has 19 + 38), random weights, 1024x1024 px (64x64 packed = 4096 image
    tokens), FLUX.1-schnell's scheduler; one-layer text encoders of FLUX's widths and a narrow
    16-channel VAE. `small`: the same structure at 1/8 width (RoPE axes (4, 6, 6): each must be
    even), to test it. `dtype`: the transformer's, made and saved in it (float16 holds FLUX.1's
    full 19 + 38 blocks in 24 GB instead of 48)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    w = 8 if small else 1
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                                             attention_head_dim=128 // w, num_attention_heads=24, joint_attention_dim=4096 // w,
                                             pooled_projection_dim=768 // w, axes_dims_rope=(4, 6, 6) if small else (16, 56, 56), guidance_embeds=False)
    finally:
        torch.set_default_dtype(default)
    torch.manual_seed(0)
    clip = CLIPTextModel(_clip_text_config(hidden_size=768 // w, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                                           max_position_embeddings=77))
    t5 = T5EncoderModel(T5Config(vocab_size=88, d_model=4096 // w, d_kv=64, d_ff=1024, num_layers=1, num_heads=8, decoder_start_token_id=0,
                                 pad_token_id=0, eos_token_id=1))
    vae = _vae(latent_channels=16, block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, shift_factor=0.1159, scaling_factor=0.3611)
    # FLUX.1-schnell's scheduler config; schnell is sampled with T5 length 256.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False, base_image_seq_len=256, max_image_seq_len=4096,
                                                base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(transformer=transformer, text_encoder=clip, text_encoder_2=t5, vae=vae, scheduler=scheduler,
                        tokenizer=clip_tokenizer(folder / "_tok", max_length=77), tokenizer_2=t5_tokenizer(max_length=256))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_observed_qsched(model_dir: Path, out: Path, schemes: tuple, *, steps: int, guidance: float | None = None,
                          coefficients=None, gamma: float | None = None, prompts: tuple[str, ...] = ("a red circle",), seed: int = 0) -> Path:
    """A qsched.json without the JAQ search, for tests and benchmarks: `coefficients` (default all
    ones) for every scheme (a name or a `Scheme`, e.g. with int8 attention), and for schemes with
    static activations the ranges observed on one sampler run of `prompts` (as calibration observes
    them, along the unscaled trajectory)."""
    from qsched_export.pipeline import denoise_fn, draw_noise, open_backbone
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, write_qsched
    from qsched_export.quant import activation_ranges, get_scheme, observe_ranges
    from qsched_export.sampler import QSchedCoefficients, sample_loop

    backbone = open_backbone(str(model_dir), guidance=guidance)
    plan = backbone.plan(steps, **({"gamma": gamma} if gamma is not None else {}))
    cond = backbone.encode(list(prompts))
    latents, noises = draw_noise(plan, backbone.latent_shape(len(prompts)), torch.Generator().manual_seed(seed))
    entries = {}
    for scheme in map(get_scheme, schemes):
        ranges = {}
        if scheme.static_activations:
            model, _ = backbone.scheme_model(scheme)
            with torch.no_grad(), observe_ranges(model):
                sample_loop(denoise_fn(backbone.denoiser(model), cond), plan, latents, noises)
            ranges = activation_ranges(model)
        entries[scheme.name] = SchemeEntry(coefficients or QSchedCoefficients.ones(steps), activation_ranges=ranges)
    write_qsched(out, QSchedFile(backbone.source.id, plan.family, steps, backbone.guidance.scale, entries, plan.to_dict()))
    return out


def save_sd15_sized(folder: Path) -> Path:
    """An SD1.5-shaped UNet (860 M parameters) with random weights, plus a 1-layer text encoder and a
    narrow 4-block VAE: the benchmarks time and size the denoiser."""
    from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    text_encoder = CLIPTextModel(_clip_text_config(hidden_size=768, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=12,
                                                   max_position_embeddings=77))
    vae = _vae(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    pipe = StableDiffusionPipeline(unet=unet, text_encoder=text_encoder, vae=vae, tokenizer=clip_tokenizer(folder / "_tok", max_length=77),
                                   scheduler=LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
