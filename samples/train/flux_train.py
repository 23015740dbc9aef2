"""Train samples/shapes-flux: a 16-channel VAE, then a small FLUX transformer and T5 encoder jointly
by rectified flow, on the procedural shapes scenes (same data as shapes-sd).

One process runs both stages, stops itself by wall clock and saves a loadable pipeline after the
VAE and then every ``--ckpt-every`` seconds, so a late failure still leaves usable weights.

    python -m samples.train.flux_train --out out/ --vae-seconds 110 --flux-seconds 265   # GPU
    python -m samples.train.flux_train --out /tmp/flux-smoke --smoke                     # CPU check
    python -m samples.train.flux_train --estimate                                         # plan only

Written to ``--out``: ``shapes-flux/`` (fp16 weights, float32 configs), ``shapes-flux-fp32/``
(the same EMA weights in fp32, for the fp16 check in flux_eval; not shipped) and
``flux_stats.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from samples.train import scenes
from samples.train.flux_models import (AXES_DIMS_ROPE, DOUBLE_BLOCKS, HEAD_DIM, HEADS, LATENT_CHANNELS,
                                       LATENT_SIZE, SD_SAMPLE, SINGLE_BLOCKS, T5_MAX_TOKENS, TOKEN_GRID,
                                       count_parameters, load_clip, make_flux_transformer, make_flux_vae,
                                       make_scheduler, make_t5, sampler_sigmas, shift_sigmas,
                                       zero_init_modulation)
from samples.train.flux_tokenizer import check_t5_tokenizer, save_t5_tokenizer
from samples.train.train import Ema, ScenePool, cosine_lr, log

# Static shift of the shipped scheduler and of the training sigma distribution; why 2, see
# "Why this shift" in samples/shapes-flux/README.md. flux_eval measures 1, 1.5, 2 and 3.
DEFAULT_SHIFT = 2.0
# A fifth of the training sigmas sit exactly on the few-step sampler's grid (2, 4 and 8 steps,
# 4 counted twice: 18 points, 4 of them σ=1): logit-normal sampling almost never draws σ near 1,
# yet every sample starts there.
GRID_STEPS = (2, 4, 4, 8)
GRID_FRACTION = 0.2
CAPTION_DROPOUT = 0.1  # empty captions, so true CFG (negative_prompt="") stays possible
# Budget estimate. Dispatch: the shapes-sd UNet step (~3,900 dispatched ops counted the same way)
# ran at 8.5 it/s on the H100 machine at batch 256 and 7.4 at 1024, so the CPU set the pace:
# ~30 µs per op. GPU: an assumed 150 TFLOPS effective in bf16 (H200 dense peak ~990; these
# GEMMs are only 160 wide) and 3 TB/s effective memory bandwidth (peak 4.8) for the rest.
US_PER_OP = 30.0
ASSUMED_TFLOPS = 150.0
ASSUMED_TBPS = 3.0


@dataclass(frozen=True)
class FluxRunConfig:
    out: Path
    vae_seconds: float
    flux_seconds: float
    deadline: float        # absolute time.time() by which training must have stopped
    batch: int             # transformer batch with CUDA graphs
    eager_batch: int       # transformer batch without them
    vae_batch: int
    pool: int
    seed: int
    device: str
    shift: float = DEFAULT_SHIFT
    lr: float = 5e-4       # peak AdamW rate at batch 256; scaled by sqrt(batch / 256)
    ckpt_every: float = 60.0
    max_steps: int | None = None  # smoke runs stop by step count
    cuda_graphs: bool = False
    amp: bool = True       # bf16 autocast (CPU smoke runs use fp32)
    vae_from: Path | None = None  # reuse this pipeline folder's trained VAE instead of training one


def _autocast(cfg: FluxRunConfig):
    # No weight-cast cache: CUDA graphs require it off, and each weight is cast once per step anyway.
    return torch.autocast(cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.amp, cache_enabled=False)


def _adamw(params, lr: float, cfg: FluxRunConfig, weight_decay: float, betas=(0.9, 0.999)):
    # Fused AdamW: one kernel for all parameters instead of a dozen foreach launches per step.
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas,
                             fused=cfg.device.startswith("cuda"))


# ----------------------------------------------------------------------------- VAE

def vae_loss(vae, x: torch.Tensor, foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """shapes-sd's VAE loss (train.train_vae): L1 + L2 weighted 21x on object pixels, because
    objects cover a few percent of the pixels and an unweighted VAE learns only backgrounds; an
    image-gradient term for the edges that shapes and counts need; KL 1e-4 per pixel.
    Returns (loss, kl, reconstruction)."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample.float()
    weight = 1 + 20 * foreground
    err = recon - x
    pixel = (weight * (err.abs() + err ** 2)).mean() / weight.mean()

    def grad(t):
        return t[..., 1:, :] - t[..., :-1, :], t[..., :, 1:] - t[..., :, :-1]

    edge = sum(F.l1_loss(a, b) for a, b in zip(grad(recon), grad(x)))
    kl = posterior.kl().mean() / x[0].numel()
    return pixel + 0.5 * edge + 1e-4 * kl, kl, recon


def train_vae(cfg: FluxRunConfig, pool: ScenePool):
    torch.manual_seed(cfg.seed)
    vae = make_flux_vae().to(cfg.device).train()
    peak = 1e-3 * math.sqrt(cfg.vae_batch / 256)
    opt = _adamw(vae.parameters(), peak, cfg, weight_decay=0.0)
    start, step = time.time(), 0
    end = min(start + cfg.vae_seconds, cfg.deadline)
    while (frac := (time.time() - start) / (end - start)) < 1 and step != cfg.max_steps:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(peak, frac)
        images, _, foreground = pool.batch(cfg.vae_batch)
        with _autocast(cfg):
            loss, kl, _ = vae_loss(vae, images * 2 - 1, foreground)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 200 == 0 or step == 1:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.3f} "
                f"{step / (time.time() - start):.1f} it/s, {time.time() - start:.0f}s")
    vae.eval().requires_grad_(False)
    stats = dict(steps=step, seconds=time.time() - start, batch=cfg.vae_batch, peak_lr=peak)
    # 2048 scenes on the GPU (well under a second); a CPU run only needs the code path.
    stats.update(latent_statistics(vae, pool, 2048 if cfg.device.startswith("cuda") else 16))
    vae.register_to_config(scaling_factor=stats["scaling_factor"], shift_factor=stats["shift_factor"])
    log(f"vae done: {step} steps in {stats['seconds']:.0f}s, recon mse {stats['recon_mse']:.5f}, "
        f"shift_factor {stats['shift_factor']:.4f}, scaling_factor {stats['scaling_factor']:.4f}")
    return vae, stats


@torch.no_grad()
def load_vae(cfg: FluxRunConfig, folder: Path):
    """A VAE trained by an earlier call (its pipeline checkpoint's `vae/`, scaling and shift factors
    in its config), so a rerun spends its budget on the transformer."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae").to(cfg.device).eval().requires_grad_(False)
    stats = {"from": str(folder.name), "scaling_factor": vae.config.scaling_factor, "shift_factor": vae.config.shift_factor}
    log(f"vae loaded from {folder.name}: shift_factor {stats['shift_factor']:.4f}, scaling_factor {stats['scaling_factor']:.4f}")
    return vae, stats


def latent_statistics(vae, pool: ScenePool, n: int) -> dict:
    """FLUX-style latent normalisation, latents = (z - shift_factor) * scaling_factor, from the
    trained encoder's posterior samples; plus reconstruction error on fresh scenes."""
    zs, mse = [], 0.0
    chunks = max(1, n // 512)
    for _ in range(chunks):
        images, _, _ = pool.batch(n // chunks)
        z = vae.encode(images * 2 - 1).latent_dist.sample()
        mse += F.mse_loss(vae.decode(z).sample, images * 2 - 1).item() / chunks
        zs.append(z.float())
    z = torch.cat(zs)
    shift = z.mean().item()
    return dict(shift_factor=shift, scaling_factor=1.0 / (z - shift).std().item(), recon_mse=mse,
                latent_channel_std=[round(v, 4) for v in z.std(dim=(0, 2, 3)).tolist()])


# ----------------------------------------------------------------------------- text

class CaptionBank:
    """T5 ids for every pool caption (plus the empty caption, last) and the frozen CLIP pooled
    embeddings, computed once: the CLIP encoder is shapes-sd's and is not trained here."""

    def __init__(self, captions: list[str], t5_tokenizer, clip, clip_tokenizer, device: str):
        texts = list(captions) + [""]
        self.empty = len(captions)
        self.t5_ids = t5_tokenizer(texts, padding="max_length", max_length=T5_MAX_TOKENS, truncation=True,
                                   return_tensors="pt").input_ids.to(device)
        clip_ids = clip_tokenizer(texts, padding="max_length", max_length=clip_tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            self.pooled = torch.cat([clip(ids).pooler_output.float() for ids in clip_ids.split(4096)])


def sample_sigmas(n: int, shift: float, grid: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shifted logit-normal sigmas (SD3/FLUX), with GRID_FRACTION of them on the sampler's grid."""
    device = grid.device
    logit_normal = shift_sigmas(torch.sigmoid(torch.randn(n, device=device, generator=g)), shift)
    on_grid = grid[torch.randint(len(grid), (n,), device=device, generator=g)]
    pick = torch.rand(n, device=device, generator=g) < GRID_FRACTION
    return torch.where(pick, on_grid, logit_normal)


# ----------------------------------------------------------------------------- transformer

def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, 16, 16, 16] latents -> [B, 64, 64] tokens, as FluxPipeline._pack_latents does."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def position_ids(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(img_ids [64, 3], txt_ids [32, 3]) exactly as FluxPipeline builds them for 64x64 images."""
    from diffusers import FluxPipeline

    img_ids = FluxPipeline._prepare_latent_image_ids(1, TOKEN_GRID, TOKEN_GRID, device, torch.float32)
    return img_ids, torch.zeros(T5_MAX_TOKENS, 3, device=device)


class Denoiser(torch.nn.Module):
    """T5 encoder + transformer as one module with positional tensor arguments, the form
    ``torch.cuda.make_graphed_callables`` needs. Called exactly as FluxPipeline calls them."""

    def __init__(self, transformer, t5, device: str):
        super().__init__()
        self.transformer, self.t5 = transformer, t5
        img_ids, txt_ids = position_ids(device)
        self.register_buffer("img_ids", img_ids, persistent=False)
        self.register_buffer("txt_ids", txt_ids, persistent=False)

    def forward(self, noisy, t5_ids, pooled, sigma):
        encoded = self.t5(t5_ids)[0]
        return self.transformer(hidden_states=noisy, encoder_hidden_states=encoded, pooled_projections=pooled,
                                timestep=sigma, img_ids=self.img_ids, txt_ids=self.txt_ids, return_dict=False)[0]


@torch.no_grad()
def flux_inputs(cfg, batch, vae, bank: CaptionBank, grid, g):
    """Rectified flow: x_s = (1 - s) x0 + s noise, target noise - x0, timestep s (FluxPipeline
    feeds timestep / 1000 = sigma). Returns ((noisy, t5_ids, pooled, sigma), target)."""
    images, idx, _ = batch
    n = len(idx)
    z = vae.encode(images * 2 - 1).latent_dist.sample(generator=g)
    x0 = pack((z - vae.config.shift_factor) * vae.config.scaling_factor)
    drop = torch.rand(n, device=x0.device, generator=g) < CAPTION_DROPOUT
    text = torch.where(drop, torch.full_like(idx, bank.empty), idx)
    sigma = sample_sigmas(n, cfg.shift, grid, g)
    noise = torch.randn(x0.shape, device=x0.device, generator=g)
    s = sigma[:, None, None]
    return ((1 - s) * x0 + s * noise, bank.t5_ids[text], bank.pooled[text], sigma), noise - x0


def flux_loss(cfg, denoise, inputs, target) -> torch.Tensor:
    with _autocast(cfg):
        pred = denoise(*inputs)
    return F.mse_loss(pred.float(), target)


def try_cuda_graphs(cfg: FluxRunConfig, denoiser: Denoiser, inputs, target, params):
    """``denoiser`` as a CUDA-graphed callable (forward and backward each one graph launch), or
    None. An eager step of this model is ~3,500 small kernel launches, so the CPU, not the GPU,
    sets the pace; replaying graphs removes that. The graphed module shares the parameters, and
    its output and gradients are checked against eager ones on the same batch before use; any
    error or mismatch keeps the eager path.

    The check runs on temporarily perturbed weights: at adaLN-Zero init the output and most
    gradients are exactly zero and would agree whatever the graph computed."""
    saved = [p.detach().clone() for p in params]
    try:
        start = time.time()
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p), alpha=0.02)
        with _autocast(cfg):
            eager_out = denoiser(*inputs)
        eager_grads = torch.autograd.grad(F.mse_loss(eager_out.float(), target), params, allow_unused=True)
        graphed = Denoiser(denoiser.transformer, denoiser.t5, cfg.device)  # shares parameters; `denoiser` stays eager
        with _autocast(cfg):
            # One callable: sample_args is its argument tuple, called as graphed(*inputs).
            graphed = torch.cuda.make_graphed_callables(graphed, tuple(inputs), allow_unused_input=True)
            graph_out = graphed(*inputs)
        graph_grads = torch.autograd.grad(F.mse_loss(graph_out.float(), target), params, allow_unused=True)

        def rel(a: list, b: list) -> float:
            num = sum(((x.float() - y.float()) ** 2).sum() for x, y in zip(a, b) if x is not None and y is not None)
            den = sum((x.float() ** 2).sum() for x in a if x is not None)
            return float((num / den).sqrt())

        out_err = rel([eager_out.detach()], [graph_out.detach()])
        grad_err = rel(list(eager_grads), list(graph_grads))
        ok = out_err < 0.02 and grad_err < 0.05 and math.isfinite(out_err) and math.isfinite(grad_err)
        log(f"cuda graphs: captured in {time.time() - start:.1f}s, relative error vs eager: output {out_err:.1e}, "
            f"gradients {grad_err:.1e} -> {'using graphs' if ok else 'MISMATCH, staying eager'}")
        return (graphed if ok else None), dict(used=ok, output_rel_err=out_err, grad_rel_err=grad_err)
    except Exception as e:  # the eager path always works; report why graphs did not
        log(f"cuda graphs unavailable ({type(e).__name__}: {e}); staying eager")
        return None, dict(used=False, error=f"{type(e).__name__}: {e}")
    finally:  # in place, so the graphs (which hold these tensors) see the restored values
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def train_flux(cfg: FluxRunConfig, pool: ScenePool, vae, bank: CaptionBank, saver: "Saver", stats: dict):
    torch.manual_seed(cfg.seed + 1)
    transformer = make_flux_transformer()
    zero_init_modulation(transformer)
    t5 = make_t5(saver.t5_tokenizer_size)
    transformer, t5 = transformer.to(cfg.device).train(), t5.to(cfg.device).train()
    params = list(transformer.parameters()) + list(t5.parameters())
    n_tensors = len(list(transformer.parameters()))
    g = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 2)
    grid = torch.cat([sampler_sigmas(k, cfg.shift) for k in GRID_STEPS]).to(cfg.device)
    denoiser = denoise = Denoiser(transformer, t5, cfg.device)
    start = time.time()
    # Graphed, the step is GPU-bound and samples/s hardly depend on the batch, so the smaller
    # batch buys more steps; eager, the CPU sets the pace per step and the larger batch is free.
    batch, graph_stats = cfg.eager_batch, dict(used=False, reason="not tried (--no-cuda-graphs or CPU)")
    if cfg.cuda_graphs:
        sample_inputs, sample_target = flux_inputs(cfg, pool.batch(cfg.batch), vae, bank, grid, g)
        graphed, graph_stats = try_cuda_graphs(cfg, denoiser, sample_inputs, sample_target, params)
        if graphed is not None:
            denoise, batch = graphed, cfg.batch
    peak = cfg.lr * math.sqrt(batch / 256)
    opt = _adamw(params, peak, cfg, weight_decay=0.01, betas=(0.9, 0.99))
    ema = Ema(params, decay=0.999)

    def checkpoint(final: bool) -> None:
        if not all(bool(torch.isfinite(s).all()) for s in ema.shadow):  # never overwrite a good checkpoint
            log("EMA weights are not finite: checkpoint skipped, the previous one stays")
            return
        saver.save(transformer, ema.shadow[:n_tensors], t5, ema.shadow[n_tensors:], final=final)

    step, last_ckpt = 0, time.time()
    end = min(start + cfg.flux_seconds, cfg.deadline)
    running, since_log, losses = torch.zeros((), device=cfg.device), 0, []
    log(f"flux: {count_parameters(transformer) / 1e6:.2f} M transformer + {count_parameters(t5) / 1e6:.2f} M T5 "
        f"parameters, batch {batch}, peak lr {peak:.2e}, {'CUDA graphs' if denoise is not denoiser else 'eager'}, "
        f"until {end - start:.0f}s")
    error = None
    try:
        while (frac := (time.time() - start) / (end - start)) < 1 and step != cfg.max_steps:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(peak, frac)
            loss = flux_loss(cfg, denoise, *flux_inputs(cfg, pool.batch(batch), vae, bank, grid, g))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update(step)
            running += loss.detach()
            step, since_log = step + 1, since_log + 1
            if step % 100 == 0 or step == 1:
                mean = running.item() / since_log  # the only host sync: once per 100 steps
                if not math.isfinite(mean):
                    raise FloatingPointError(f"loss {mean} at step {step}")
                running.zero_()
                since_log = 0
                losses.append((step, round(mean, 5)))
                log(f"flux step {step} loss {mean:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                    f"{step / (time.time() - start):.1f} it/s, {time.time() - start:.0f}s")
            if time.time() - last_ckpt > cfg.ckpt_every:
                checkpoint(final=False)
                last_ckpt = time.time()
                stats["flux"] = dict(steps=step, seconds=time.time() - start, batch=batch, partial=True, losses=losses)
                saver.write_stats(stats)
    except Exception as e:  # keep what was learnt: the EMA weights are still saved below
        error = f"{type(e).__name__}: {e}"
        log(f"flux training stopped by {error}")
    stats["flux"] = dict(steps=step, seconds=time.time() - start, batch=batch, peak_lr=peak, ema_decay=ema.decay,
                         final_loss=losses[-1][1] if losses else None, losses=losses,
                         it_per_s=step / max(time.time() - start, 1e-9), cuda_graphs=graph_stats, error=error)
    log(f"flux done: {step} steps in {stats['flux']['seconds']:.0f}s")
    checkpoint(final=True)
    saver.write_stats(stats)


# ----------------------------------------------------------------------------- saving

def _cpu_copy(module, shadow: list[torch.Tensor] | None = None):
    """A float32 CPU copy of ``module``, with the EMA weights if given; the original is untouched."""
    copied = copy.deepcopy(module).to("cpu", torch.float32).eval().requires_grad_(False)
    if shadow is not None:
        with torch.no_grad():
            for p, s in zip(copied.parameters(), shadow, strict=True):
                p.copy_(s)
    return copied


class Saver:
    """Writes the pipeline folder atomically (a kill mid-save leaves the previous checkpoint)."""

    def __init__(self, out: Path, vae, clip, clip_tokenizer, t5_tokenizer, shift: float, tokenizer_dirs: dict):
        self.out, self.tokenizer_dirs = out, tokenizer_dirs
        self.vae, self.clip = _cpu_copy(vae), _cpu_copy(clip)
        self.clip_tokenizer, self.t5_tokenizer, self.shift = clip_tokenizer, t5_tokenizer, shift
        self.t5_tokenizer_size = len(t5_tokenizer)

    def save(self, transformer, transformer_shadow, t5, t5_shadow, final: bool) -> None:
        start = time.time()
        transformer, t5 = _cpu_copy(transformer, transformer_shadow), _cpu_copy(t5, t5_shadow)
        if final:  # fp32 twin for flux_eval's fp16 check
            self._write(self.out / "shapes-flux-fp32", transformer, t5, torch.float32)
        self._write(self.out / "shapes-flux", transformer, t5, torch.float16)
        log(f"saved {'final' if final else 'checkpoint'} pipeline in {time.time() - start:.1f}s")

    def save_untrained(self) -> None:
        """Right after the VAE: a complete pipeline (zero-init transformer) so the VAE is never lost."""
        transformer = make_flux_transformer()
        zero_init_modulation(transformer)
        self._write(self.out / "shapes-flux", transformer, make_t5(self.t5_tokenizer_size), torch.float16)

    def _write(self, folder: Path, transformer, t5, dtype: torch.dtype) -> None:
        from diffusers import FluxPipeline

        modules = dict(vae=self.vae, text_encoder=self.clip, text_encoder_2=t5, transformer=transformer)
        pipe = FluxPipeline(scheduler=make_scheduler(self.shift), tokenizer=self.clip_tokenizer,
                            tokenizer_2=self.t5_tokenizer,
                            **{k: copy.deepcopy(m).to(dtype) for k, m in modules.items()})
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipe.save_pretrained(partial, safe_serialization=True)
        declare_float32(partial)
        # Ship the tokenizer files as built, not as transformers re-serialises them: that copy
        # keeps whatever padding/truncation the tokenizer was last called with (a raw
        # tokenizers.Tokenizer.from_file would then pad every prompt) and drops vocab.json/merges.txt.
        for sub, source in self.tokenizer_dirs.items():
            shutil.rmtree(partial / sub)
            shutil.copytree(source, partial / sub)
        check_t5_tokenizer(partial / "tokenizer_2", scenes.WORDS, T5_MAX_TOKENS)
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            folder.rename(old)
        partial.rename(folder)
        shutil.rmtree(old, ignore_errors=True)

    def write_stats(self, stats: dict) -> None:
        (self.out / "flux_stats.json").write_text(json.dumps(stats, indent=2, default=str))


def declare_float32(folder: Path) -> None:
    """fp16 weights, float32 model: transformers v5 loads a text encoder in its config's ``dtype``
    when none is given, which would leave the text encoders in fp16 next to an fp32 transformer
    and break a plain ``FluxPipeline.from_pretrained(folder)``. Also name tokenizer_2's class
    ``T5TokenizerFast`` as FLUX.1 does (in transformers v5 it is the same class as T5Tokenizer;
    in v4 only the fast one reads tokenizer.json)."""
    for sub in ("text_encoder", "text_encoder_2"):
        path = folder / sub / "config.json"
        config = json.loads(path.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = "float32"
        path.write_text(json.dumps(config, indent=2) + "\n")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")


# ----------------------------------------------------------------------------- estimate

def estimate(graph_batch: int, eager_batch: int, flux_seconds: float, vocab_size: int) -> dict:
    """Steps/s of the flux stage on the GPU: GPU time from FLOPs and memory traffic, CPU time from
    dispatched ops (eager: every op; CUDA graphs: only the data ops outside the graphed model).

    Counts one training step at batch 2 on CPU copies with bf16 autocast (about a second)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class OpCounter(TorchDispatchMode):
        """Dispatched ops, and bytes written by the ones that are not views."""

        def __init__(self):
            super().__init__()
            self.ops, self.bytes = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            returns = func._schema.returns
            if returns and not (returns[0].alias_info is not None and not returns[0].alias_info.is_write):
                self.bytes += sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(out)
                                  if isinstance(t, torch.Tensor))
            return out

    n = 2
    cfg = FluxRunConfig(out=Path("."), vae_seconds=0, flux_seconds=0, deadline=0, batch=n, eager_batch=n, vae_batch=n,
                        pool=n,
                        seed=0, device="cpu", amp=True)  # CPU bf16 autocast inserts the casts the GPU run has
    denoiser = Denoiser(make_flux_transformer(), make_t5(vocab_size), "cpu")
    vae, pool = make_flux_vae().eval(), ScenePool(16, 0, "cpu")
    bank = CaptionBank.__new__(CaptionBank)  # random ids and pooled vectors: the cost does not depend on them
    bank.t5_ids, bank.pooled, bank.empty = torch.randint(3, vocab_size, (17, T5_MAX_TOKENS)), torch.randn(17, 128), 16
    grid = torch.cat([sampler_sigmas(k, DEFAULT_SHIFT) for k in GRID_STEPS])
    g = torch.Generator().manual_seed(0)

    def data():
        return flux_inputs(cfg, pool.batch(n), vae, bank, grid, g)

    def model(inputs, target):
        flux_loss(cfg, denoiser, inputs, target).backward()

    model(*data())  # warm-up: lazy initialisation is not per-step work
    inputs, target = data()
    with OpCounter() as outside:
        data()
    with OpCounter() as inside:
        model(inputs, target)
    with FlopCounterMode(display=False) as flops:
        model(*data())
    gflop = flops.get_total_flops() / n / 1e9
    # Writes, plus about twice as much read; the fused AdamW, EMA lerp and clipping add ~20 ops.
    gbytes = 3 * (inside.bytes + outside.bytes) / n / 1e9
    gpu_ms_per_sample = gflop / ASSUMED_TFLOPS + gbytes / ASSUMED_TBPS
    plan = {}
    for name, batch, ops in (("eager", eager_batch, inside.ops + outside.ops + 20),
                             ("cuda_graphs", graph_batch, outside.ops + 20)):
        gpu_ms, cpu_ms = gpu_ms_per_sample * batch, ops * US_PER_OP / 1000
        step_ms = max(gpu_ms, cpu_ms)
        plan[name] = dict(batch=batch, gpu_ms=round(gpu_ms, 1), cpu_ms=round(cpu_ms, 1),
                          bound="gpu" if gpu_ms > cpu_ms else "cpu dispatch", it_per_s=round(1000 / step_ms, 1),
                          planned_steps=int(1000 / step_ms * flux_seconds),
                          samples_per_s=int(1000 / step_ms * batch))
    return dict(gflop_per_sample=round(gflop, 3), gbytes_per_sample=round(gbytes, 3),
                ops_model=inside.ops, ops_data=outside.ops, **plan,
                assumptions=f"{ASSUMED_TFLOPS:.0f} TFLOPS and {ASSUMED_TBPS:.0f} TB/s effective, "
                            f"{US_PER_OP:.0f} us per dispatched op (measured on the shapes-sd run)")


# ----------------------------------------------------------------------------- main

def log_estimate(e: dict, seconds: float) -> None:
    log(f"estimate: {e['gflop_per_sample']} GFLOP and {e['gbytes_per_sample']} GB moved per sample; "
        f"{e['ops_model']} model + {e['ops_data']} data ops per step")
    for name in ("eager", "cuda_graphs"):
        plan = e[name]
        log(f"  {name} at batch {plan['batch']}: GPU {plan['gpu_ms']} ms, CPU {plan['cpu_ms']} ms per step, "
            f"{plan['bound']}-bound, ~{plan['it_per_s']} it/s -> ~{plan['planned_steps']} steps in {seconds:.0f}s")


def run(cfg: FluxRunConfig) -> dict:
    import diffusers
    import transformers

    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    stats: dict = {
        "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
        "versions": dict(torch=torch.__version__, diffusers=diffusers.__version__,
                         transformers=transformers.__version__),
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "architecture": dict(latent=f"{LATENT_SIZE}x{LATENT_SIZE}x{LATENT_CHANNELS}", tokens=TOKEN_GRID ** 2,
                             heads=HEADS, head_dim=HEAD_DIM, double_blocks=DOUBLE_BLOCKS,
                             single_blocks=SINGLE_BLOCKS, axes_dims_rope=AXES_DIMS_ROPE,
                             t5_max_tokens=T5_MAX_TOKENS),
        "sigma_sampling": dict(shift=cfg.shift, logit_normal=(0.0, 1.0), grid_steps=GRID_STEPS,
                               grid_fraction=GRID_FRACTION, caption_dropout=CAPTION_DROPOUT),
    }
    pool = ScenePool(cfg.pool, cfg.seed, cfg.device)
    t5_tokenizer = save_t5_tokenizer(scenes.WORDS, cfg.out / "t5_tokenizer", T5_MAX_TOKENS, pool.captions)
    clip, clip_tokenizer = load_clip()
    clip = clip.to(cfg.device).eval().requires_grad_(False)
    bank = CaptionBank(pool.captions, t5_tokenizer, clip, clip_tokenizer, cfg.device)
    # The step estimate (--estimate) is not repeated here: it is CPU work that would cost device time.
    log(f"setup {time.time() - t0:.0f}s: pool {cfg.pool}, T5 vocab {len(t5_tokenizer)}")

    if cfg.vae_from is not None:
        vae, stats["vae"] = load_vae(cfg, cfg.vae_from)
    else:
        vae, stats["vae"] = train_vae(cfg, pool)
    saver = Saver(cfg.out, vae, clip, clip_tokenizer, t5_tokenizer, cfg.shift,
                  tokenizer_dirs=dict(tokenizer=SD_SAMPLE / "tokenizer", tokenizer_2=cfg.out / "t5_tokenizer"))
    saver.save_untrained()
    stats["parameters"] = dict(vae=count_parameters(vae), text_encoder=count_parameters(clip),
                               text_encoder_2=count_parameters(make_t5(len(t5_tokenizer))),
                               transformer=count_parameters(make_flux_transformer()))
    saver.write_stats(stats)
    train_flux(cfg, pool, vae, bank, saver, stats)
    stats["total_seconds"] = time.time() - t0
    saver.write_stats(stats)
    log(f"training done in {stats['total_seconds']:.0f}s")
    return stats


def smoke_check(folder: Path) -> None:
    """Load the saved pipeline the way a user would and draw one image."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("two small red circles on a blue background", num_inference_steps=4, guidance_scale=0.0,
                 height=64, width=64, max_sequence_length=T5_MAX_TOKENS,
                 generator=torch.Generator().manual_seed(0)).images[0]
    log(f"smoke: FluxPipeline.from_pretrained({folder.name}) drew a {image.size} image")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--vae-seconds", type=float, default=110.0)
    p.add_argument("--vae-from", type=Path, help="a pipeline folder whose trained vae/ to reuse (skips the VAE stage; pass --vae-seconds 0)")
    p.add_argument("--flux-seconds", type=float, default=265.0)
    p.add_argument("--setup-seconds", type=float, default=30.0,
                   help="allowance for imports, data and saving: training stops at most "
                        "vae + flux + setup seconds after start, however long setup took")
    p.add_argument("--batch", type=int, default=512, help="transformer batch when CUDA-graphed")
    p.add_argument("--eager-batch", type=int, default=1024, help="transformer batch when eager")
    p.add_argument("--vae-batch", type=int, default=256)
    p.add_argument("--pool", type=int, default=60000, help="captioned scenes in the training pool")
    p.add_argument("--shift", type=float, default=DEFAULT_SHIFT)
    p.add_argument("--ckpt-every", type=float, default=60.0, help="seconds between pipeline checkpoints")
    p.add_argument("--no-amp", action="store_true",
                   help="train in float32 (TF32 matmuls) instead of bf16 autocast (calls 1-2 on the H200 died with an "
                        "illegal memory access in the first bf16 transformer step, eager and graphed alike)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="train the transformer eagerly (by default its step is CUDA-graphed once checked)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="CPU run of every stage for a couple of steps")
    p.add_argument("--estimate", action="store_true", help="print the GPU step estimate and exit")
    args = p.parse_args()
    if args.out is None and not args.estimate:
        p.error("--out is required unless --estimate")
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.estimate:
        from samples.train.flux_tokenizer import build_vocab

        e = estimate(args.batch, args.eager_batch, args.flux_seconds, len(build_vocab(scenes.WORDS)))
        log_estimate(e, args.flux_seconds)
        print(json.dumps(e, indent=2))
        return
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned convolutions pay off
    if args.smoke:
        cfg = FluxRunConfig(out=args.out, vae_seconds=60, flux_seconds=60, deadline=start + 300, batch=2,
                            eager_batch=2, vae_batch=2, pool=64, seed=args.seed, device=device, shift=args.shift,
                            ckpt_every=0.0, max_steps=2, amp=False, vae_from=args.vae_from)
    else:
        cfg = FluxRunConfig(out=args.out, vae_seconds=args.vae_seconds, flux_seconds=args.flux_seconds,
                            deadline=start + args.vae_seconds + args.flux_seconds + args.setup_seconds,
                            batch=args.batch, eager_batch=args.eager_batch, vae_batch=args.vae_batch,
                            pool=args.pool, seed=args.seed,
                            device=device, shift=args.shift, ckpt_every=args.ckpt_every, amp=device != "cpu" and not args.no_amp,
                            cuda_graphs=device == "cuda" and not args.no_cuda_graphs, vae_from=args.vae_from)
    log(f"flux_train on {device}: vae {cfg.vae_seconds:.0f}s, flux {cfg.flux_seconds:.0f}s, "
        f"hard stop at +{cfg.deadline - start:.0f}s")
    run(cfg)
    if args.smoke:
        smoke_check(cfg.out / "shapes-flux")


if __name__ == "__main__":
    main()
