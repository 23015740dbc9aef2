"""Architectures of the sample generator and judges, in one place so train and docs agree."""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

LATENT_SIZE = 16
TEXT_WIDTH = 128
MAX_TOKENS = 32
TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"

# Text width is small because open_clip's fixed 49408-token vocabulary dominates the size.
JUDGE_CONFIGS = {
    "a": dict(
        embed_dim=64,
        vision_cfg=dict(image_size=64, patch_size=8, width=128, layers=4, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=48, heads=4, layers=4),
    ),
    "b": dict(
        embed_dim=48,
        vision_cfg=dict(image_size=64, patch_size=8, width=96, layers=4, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=40, heads=4, layers=3),
    ),
}
JUDGE_SEEDS = {"a": 101, "b": 202}
JUDGE_PREPROCESS = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
                        resize_mode="shortest")


def make_vae() -> AutoencoderKL:
    # Three blocks: two 2x downsamples, 64x64x3 -> 16x16x4.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32,
    )


def make_text_encoder(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    ))


def make_unet() -> UNet2DConditionModel:
    # Cross-attention at 16x16 and 8x8 (and the 4x4 mid block), as SD does at its scales.
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128), layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
    )
