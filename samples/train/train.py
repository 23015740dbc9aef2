"""Train the sample text-to-image model (VAE, then UNet + text encoder) or one CLIP judge.

Every stage renders its data on the training device from a pool of captioned scenes, stops
itself by wall clock (``--seconds``) and always saves what it has.

    python -m samples.train.train --stage diffusion --seconds 420 --out out/   # GPU
    python -m samples.train.train --stage judge --judge a --seconds 300 --out out/
    python -m samples.train.train --stage decoder --init samples/shapes-sd --seconds 600 --out out/  # CPU ok
    python -m samples.train.train --stage diffusion --smoke --out /tmp/smoke   # CPU check
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from samples.train import scenes
from samples.train.degrade import BAD_PROMPTS, DEGRADATION_PROMPT, DEGRADATIONS, GOOD_PROMPTS, degrade
from samples.train.models import (BETA_SCHEDULE, JUDGE_CONFIGS, JUDGE_PREPROCESS, JUDGE_SEEDS, MAX_TOKENS,
                                  TRAIN_TIMESTEPS, make_text_encoder, make_unet, make_vae)


@dataclass(frozen=True)
class RunConfig:
    out: Path
    seconds: float
    batch: int
    pool: int
    seed: int
    device: str
    vae_fraction: float = 0.3  # share of the diffusion budget spent on the VAE

    @property
    def lr_scale(self) -> float:
        """Square-root learning-rate scaling from the batch of 256 the rates were tuned at."""
        return math.sqrt(self.batch / 256)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ScenePool:
    """Captioned scenes packed once; each batch gets fresh geometry on the device."""

    def __init__(self, n: int, seed: int, device: str):
        self.specs = scenes.sample_specs(n, "train", torch.Generator().manual_seed(seed))
        self.captions = [scenes.caption(s) for s in self.specs]
        self.tensors = scenes.specs_to_tensors(self.specs, device)
        self.device = device
        self.g = torch.Generator(device=device).manual_seed(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (images [B, 3, 64, 64] in [0, 1], pool indices [B], foreground masks [B, 1, 64, 64])."""
        idx = torch.randint(len(self.specs), (size,), device=self.device, generator=self.g)
        packed = scenes.rejitter({k: v[idx] for k, v in self.tensors.items()}, self.g)
        images = scenes.render_tensors(packed)
        background = scenes.background_colours(packed)[:, :, None, None]
        foreground = ((images - background).abs().sum(1, keepdim=True) > 0.05).float()
        return images, idx, foreground


def cosine_lr(peak: float, frac: float, warmup: float = 0.03) -> float:
    if frac < warmup:
        return peak * frac / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warmup) / (1 - warmup))))


class Ema:
    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up: early weights fade fast
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def copy_to(self, params: list[torch.Tensor]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


# ----------------------------------------------------------------------------- diffusion

def train_vae(cfg: RunConfig, pool: ScenePool, seconds: float, vae=None):
    """Train a new VAE, or, given one, fine-tune only its decoder.

    Decoder-only tuning leaves the latent space (and so a trained UNet) untouched.
    """
    decoder_only = vae is not None
    if vae is None:
        torch.manual_seed(cfg.seed)
        vae = make_vae()
    vae = vae.to(cfg.device).train()
    params = (list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
              if decoder_only else list(vae.parameters()))
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    peak = 1e-3 * cfg.lr_scale
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.0)
    start, step = time.time(), 0
    while (frac := (time.time() - start) / seconds) < 1:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(peak, frac)
        images, _, foreground = pool.batch(cfg.batch)
        x = images * 2 - 1
        with torch.autocast(cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.device != "cpu"):
            with torch.set_grad_enabled(not decoder_only):
                posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        # Objects cover a few percent of the pixels: weight them up, or the VAE learns only
        # backgrounds. An image-gradient term keeps the edges that shapes and counts need.
        weight = 1 + 20 * foreground
        err = recon - x
        pixel = (weight * (err.abs() + err ** 2)).mean() / weight.mean()
        grad = lambda t: (t[..., 1:, :] - t[..., :-1, :], t[..., :, 1:] - t[..., :, :-1])  # noqa: E731
        edge = sum(F.l1_loss(a, b) for a, b in zip(grad(recon), grad(x)))
        kl = posterior.kl().mean() / x[0].numel()
        loss = pixel + 0.5 * edge + (0 if decoder_only else 1e-4 * kl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 200 == 0 or step == 1:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.3f} {step / (time.time() - start):.1f} it/s")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        images, _, _ = pool.batch(min(512, cfg.batch * 4))
        latents = vae.encode(images * 2 - 1).latent_dist.sample()
        recon = vae.decode(latents).sample
        mse = F.mse_loss(recon, images * 2 - 1).item()
    if not decoder_only:
        vae.register_to_config(scaling_factor=float(1 / latents.std()))
    log(f"vae done: {step} steps, recon mse {mse:.5f}, latent std {latents.std().item():.3f}")
    return vae, dict(steps=step, seconds=time.time() - start, recon_mse=mse, decoder_only=decoder_only)


def save_pipeline(pipe, out: Path) -> None:
    # fp16 on disk halves the size; from_pretrained(torch_dtype=float32) upcasts on load.
    pipe.to("cpu", torch.float16).save_pretrained(out, safe_serialization=True)
    log(f"saved pipeline to {out}")


def tune_decoder(cfg: RunConfig, init: Path) -> None:
    """Fine-tune the VAE decoder of a saved pipeline; the UNet and text encoder stay as they are."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(init, torch_dtype=torch.float32)
    pool = ScenePool(cfg.pool, cfg.seed + 3, cfg.device)
    pipe.vae, stats = train_vae(cfg, pool, cfg.seconds, vae=pipe.vae)
    save_pipeline(pipe, cfg.out / "shapes-sd")
    (cfg.out / "decoder_stats.json").write_text(json.dumps(dict(stats, init=str(init), device=cfg.device), indent=2))


def train_diffusion(cfg: RunConfig, init: Path | None) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, TCDScheduler
    from transformers import CLIPTokenizer

    from samples.train.tokenizer import save_tokenizer

    out = cfg.out / "shapes-sd"
    tokenizer = save_tokenizer(scenes.WORDS, out / "tokenizer", MAX_TOKENS)
    pool = ScenePool(cfg.pool, cfg.seed, cfg.device)
    ids = tokenizer(pool.captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids.to(cfg.device)
    empty_ids = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids.to(cfg.device)
    stats: dict = {"device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu"}

    if init is not None:  # continue from a saved pipeline (its EMA weights)
        base = StableDiffusionPipeline.from_pretrained(init, torch_dtype=torch.float32)
        vae, text_encoder, unet = base.vae.to(cfg.device), base.text_encoder.to(cfg.device), base.unet.to(cfg.device)
        vae.requires_grad_(False)
        unet_seconds = cfg.seconds
    else:
        vae, stats["vae"] = train_vae(cfg, pool, cfg.seconds * cfg.vae_fraction)
        torch.manual_seed(cfg.seed + 1)
        text_encoder = make_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id).to(cfg.device)
        unet = make_unet().to(cfg.device)
        unet_seconds = cfg.seconds * (1 - cfg.vae_fraction)
    scaling = vae.config.scaling_factor

    noise_sched = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                                prediction_type="v_prediction")
    alphas = noise_sched.alphas_cumprod.to(cfg.device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    peak = 5e-4 * cfg.lr_scale
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01, betas=(0.9, 0.99))
    ema = Ema(params, decay=0.999)
    g = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 2)
    device_type = cfg.device.split(":")[0]
    start, step = time.time(), 0
    unet.train(), text_encoder.train()
    while (frac := (time.time() - start) / unet_seconds) < 1:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(peak, frac)
        with torch.no_grad():
            images, idx, _ = pool.batch(cfg.batch)
            latents = vae.encode(images * 2 - 1).latent_dist.sample(generator=g) * scaling
            tokens = ids[idx]
            drop = torch.rand(cfg.batch, device=cfg.device, generator=g) < 0.1  # for classifier-free guidance
            tokens = torch.where(drop[:, None], empty_ids, tokens)
            t = torch.randint(0, TRAIN_TIMESTEPS, (cfg.batch,), device=cfg.device, generator=g)
            noise = torch.randn(latents.shape, device=cfg.device, generator=g)
            a = alphas[t].sqrt()[:, None, None, None]
            s = (1 - alphas[t]).sqrt()[:, None, None, None]
            noisy, target = a * latents + s * noise, a * noise - s * latents
            # Min-SNR-5 weighting, v-prediction form: balances easy and hard timesteps.
            snr = alphas[t] / (1 - alphas[t])
            weight = torch.clamp(snr, max=5.0) / (snr + 1)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.device != "cpu"):
            cond = text_encoder(tokens)[0]
            pred = unet(noisy, t, cond).sample.float()
        loss = (weight * ((pred - target) ** 2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        step += 1
        if step % 200 == 0 or step == 1:
            log(f"unet step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{step / (time.time() - start):.1f} it/s")
    stats["unet"] = dict(steps=step, seconds=time.time() - start, batch=cfg.batch, init=str(init) if init else None)
    log(f"unet done: {step} steps in {stats['unet']['seconds']:.0f}s")

    ema.copy_to(params)
    scheduler = TCDScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                             prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer"),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    save_pipeline(pipe, out)
    (cfg.out / "diffusion_stats.json").write_text(json.dumps(stats, indent=2))


# ----------------------------------------------------------------------------- judges

def train_judge(cfg: RunConfig, name: str) -> None:
    import open_clip
    from safetensors.torch import save_file

    seed = JUDGE_SEEDS[name] + cfg.seed
    torch.manual_seed(seed)
    model_cfg = JUDGE_CONFIGS[name]
    model = open_clip.CLIP(**model_cfg).to(cfg.device)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=model_cfg["text_cfg"]["context_length"])
    pool = ScenePool(cfg.pool, seed, cfg.device)
    text_ids = tokenizer(pool.captions).to(cfg.device)
    quality_prompts = list(GOOD_PROMPTS + BAD_PROMPTS)
    quality_ids = tokenizer(quality_prompts).to(cfg.device)
    mean = torch.tensor(JUDGE_PREPROCESS["mean"], device=cfg.device)[:, None, None]
    std = torch.tensor(JUDGE_PREPROCESS["std"], device=cfg.device)[:, None, None]
    norm = lambda x: (x - mean) / std  # noqa: E731
    g = torch.Generator(device=cfg.device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98))
    device_type = cfg.device.split(":")[0]
    half = cfg.batch // 2
    start, step = time.time(), 0
    while (frac := (time.time() - start) / cfg.seconds) < 1:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(1e-3, frac)
        with torch.no_grad():
            images, idx, _ = pool.batch(cfg.batch)
            # Half the batch is degraded: the quality loss needs both kinds, and the
            # caption loss then also learns to read content through degradations.
            kind = step % len(DEGRADATIONS)
            strength = torch.rand(half, device=cfg.device, generator=g)
            images[half:] = degrade(images[half:], kind, strength, g)
            target = torch.zeros(cfg.batch, len(quality_prompts), device=cfg.device)
            target[:half, quality_prompts.index("Good photo.")] = 1
            target[:half, quality_prompts.index("a clean photo")] = 1
            target[:half, quality_prompts.index("a sharp photo")] = 1
            target[half:, quality_prompts.index("Bad photo.")] = 1
            target[half:, quality_prompts.index(DEGRADATION_PROMPT[DEGRADATIONS[kind]])] = 1
            target = target / target.sum(1, keepdim=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.device != "cpu"):
            img = F.normalize(model.encode_image(norm(images)).float(), dim=-1)
            txt = F.normalize(model.encode_text(text_ids[idx]).float(), dim=-1)
            qtxt = F.normalize(model.encode_text(quality_ids).float(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        # Same caption twice in a batch: both count as matches.
        same = (idx[:, None] == idx[None, :]).float()
        same = same / same.sum(1, keepdim=True)
        clip_loss = (F.cross_entropy(logits, same) + F.cross_entropy(logits.T, same)) / 2
        # CLIP-IQA scores with a fixed logit scale of 100, so train the quality head the same way.
        q_logits = 100 * img @ qtxt.T
        antonym = q_logits[:, [quality_prompts.index("Good photo."), quality_prompts.index("Bad photo.")]]
        antonym_target = torch.cat([torch.zeros(half), torch.ones(cfg.batch - half)]).long().to(cfg.device)
        quality_loss = F.cross_entropy(q_logits, target) + F.cross_entropy(antonym, antonym_target)
        loss = clip_loss + 0.5 * quality_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 500 == 0 or step == 1:
            log(f"judge {name} step {step} clip {clip_loss.item():.3f} quality {quality_loss.item():.3f} "
                f"scale {scale.item():.1f} {step / (time.time() - start):.1f} it/s")
    out = cfg.out / "judges" / f"shapes-clip-{name}"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "open_clip_model.safetensors")
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"size": model_cfg["vision_cfg"]["image_size"],
                                                         **JUDGE_PREPROCESS}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    (cfg.out / f"judge_{name}_stats.json").write_text(json.dumps(dict(
        steps=step, seconds=time.time() - start, batch=cfg.batch, seed=seed,
        device=torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu"), indent=2))
    log(f"judge {name} done: {step} steps, saved to {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("diffusion", "decoder", "judge"), required=True)
    p.add_argument("--judge", choices=sorted(JUDGE_CONFIGS), help="which judge (stage judge)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=420.0, help="wall-clock budget of the stage")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--pool", type=int, default=60000, help="captioned scenes in the training pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, help="pipeline folder to continue from (needed by --stage decoder)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run that exercises every code path")
    args = p.parse_args()
    if args.stage == "judge" and args.judge is None:
        p.error("--stage judge needs --judge " + "|".join(sorted(JUDGE_CONFIGS)))
    if args.stage == "decoder" and args.init is None:
        p.error("--stage decoder needs --init PIPELINE_DIR")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned convolutions pay off
    cfg = RunConfig(out=args.out, seconds=args.seconds if not args.smoke else min(args.seconds, 20),
                    batch=args.batch if not args.smoke else 8, pool=args.pool if not args.smoke else 200,
                    seed=args.seed, device=device)
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"stage {args.stage} {args.judge or ''} on {device}, {cfg.seconds:.0f}s, batch {cfg.batch}")
    if args.stage == "diffusion":
        train_diffusion(cfg, args.init)
    elif args.stage == "decoder":
        tune_decoder(cfg, args.init)
    else:
        train_judge(cfg, args.judge)


if __name__ == "__main__":
    main()
