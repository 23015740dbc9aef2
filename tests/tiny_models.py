"""Tiny randomly initialised models built in code (no downloads), shared by the test rooms."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "background", "two", "small"]


def write_clip_tokenizer(folder: Path, max_length: int = 16) -> None:
    """A CLIP BPE tokenizer with a character vocabulary: every word splits into letters."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))


def tiny_sd_components(scheduler_cls: str = "LCMScheduler", prediction_type: str = "epsilon", time_cond_proj_dim: int | None = None) -> dict:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4, time_cond_proj_dim=time_cond_proj_dim,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=80, max_position_embeddings=16,
    ))
    sched_kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type, num_train_timesteps=1000)
    if scheduler_cls == "EulerAncestralDiscreteScheduler":
        sched_kwargs["timestep_spacing"] = "trailing"
    scheduler = getattr(diffusers, scheduler_cls)(**sched_kwargs)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def save_tiny_sd(folder: Path, **kwargs) -> Path:
    """Save a tiny StableDiffusionPipeline (safetensors) to `folder` and return it."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tok")
    pipe = StableDiffusionPipeline(**tiny_sd_components(**kwargs), tokenizer=tokenizer, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
