"""Architectures of the FLUX-layout sample (samples/shapes-flux), in one place so train, tests and
the model card agree.

    64x64x3 --VAE (4x down)--> 16x16x16 latent --2x2 packing--> 64 tokens of 64 channels
    caption --T5 encoder (ours)--> 32 x 128 sequence  --+
    caption --CLIP text (shapes-sd's)--> 128 pooled ---+--> FluxTransformer2DModel --> velocity

Sizes are chosen so the whole pipeline stays near 12 MB in fp16 (the budget is 15 MB).
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 64
LATENT_CHANNELS = 16             # FLUX's latent width
VAE_BLOCKS = (32, 64, 64)        # three blocks: two 2x downsamples, 64x64 -> 16x16 (vae_scale_factor 4)
LATENT_SIZE = IMAGE_SIZE // 2 ** (len(VAE_BLOCKS) - 1)
TOKEN_GRID = LATENT_SIZE // 2    # FluxPipeline packs 2x2 latent pixels into one token: 8x8 tokens
T5_MAX_TOKENS = 32               # longest grammar caption is 14 words + </s>; pass max_sequence_length=32
T5_WIDTH = 128
CLIP_WIDTH = 128                 # hidden size of shapes-sd's CLIP text encoder (its pooled output)
HEADS, HEAD_DIM = 5, 32          # inner width 160
# RoPE axes: (text/image id, row, column); FLUX gives the id axis 1/8 of the head (16 of 128).
AXES_DIMS_ROPE = (4, 14, 14)
DOUBLE_BLOCKS, SINGLE_BLOCKS = 2, 4  # FLUX's 1:2 ratio (19 double, 38 single)

SD_SAMPLE = Path(__file__).resolve().parents[1] / "shapes-sd"  # CLIP text encoder and tokenizer come from here


def make_flux_vae():
    """16-channel ``AutoencoderKL`` in FLUX's VAE layout (no quant convs), sized like shapes-sd's.

    ``scaling_factor`` and ``shift_factor`` are placeholders here; training sets them from the
    trained encoder's latent statistics.
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS, layers_per_block=1, norm_num_groups=32,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.0, shift_factor=0.0,
    )


def make_t5(vocab_size: int):
    """A small T5 v1.1-style encoder (gated GELU, relative position buckets), trained from scratch."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=32, d_ff=2 * T5_WIDTH, num_layers=3, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=False,
    ))


def make_flux_transformer():
    """``FluxTransformer2DModel``: double- and single-stream blocks, RoPE, pooled CLIP projection,
    no guidance embedding (schnell-like)."""
    from diffusers import FluxTransformer2DModel

    if sum(AXES_DIMS_ROPE) != HEAD_DIM:
        raise ValueError(f"axes_dims_rope {AXES_DIMS_ROPE} must sum to the head dim {HEAD_DIM}")
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=DOUBLE_BLOCKS,
        num_single_layers=SINGLE_BLOCKS, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH, guidance_embeds=False,
        axes_dims_rope=AXES_DIMS_ROPE,
    )


@torch.no_grad()
def zero_init_modulation(transformer) -> None:
    """adaLN-Zero (DiT): zero every modulation projection and the output layer, so each block
    starts as the identity and the model as a zero predictor. diffusers leaves PyTorch's default
    init, which matters only when training from scratch as we do."""
    modulations = ("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear")
    for name, module in transformer.named_modules():
        if name.endswith(modulations) or name == "proj_out":
            module.weight.zero_()
            module.bias.zero_()


def load_clip(folder: Path = SD_SAMPLE):
    """shapes-sd's trained CLIP text encoder and tokenizer, in float32."""
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    return encoder, CLIPTokenizer.from_pretrained(folder / "tokenizer")


def make_scheduler(shift: float):
    """Schnell's scheduler config (static shift, no dynamic shifting) with our shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False,
                                           base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                           max_image_seq_len=4096)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The static shift that FlowMatchEulerDiscreteScheduler.set_timesteps applies."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sampler_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """The sigmas FluxPipeline visits at ``num_steps`` (it passes linspace(1, 1/n, n) to the scheduler)."""
    return shift_sigmas(torch.linspace(1.0, 1.0 / num_steps, num_steps), shift)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
