"""samples/train's FLUX sample recipe on CPU: its tokenizer, architectures, one training step of each
stage, the saved pipeline loading back into a stock FluxPipeline, and the sampler/trainer conventions.

Uses the real (small) architectures, untrained; about 15 s on two cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

# samples/ is not an installed package: import it from the repository root. (No conftest.py here:
# a second module named conftest would shadow the one tests/calibration imports.)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from samples.train import flux_eval, flux_models, flux_train, scenes  # noqa: E402
from samples.train.flux_tokenizer import build_t5_tokenizer, save_t5_tokenizer  # noqa: E402
from samples.train.train import ScenePool  # noqa: E402

CAPTIONS = [scenes.caption(s) for s in scenes.sample_specs(300, generator=torch.Generator().manual_seed(0))]


def _cfg(tmp_path: Path) -> flux_train.FluxRunConfig:
    return flux_train.FluxRunConfig(out=tmp_path, vae_seconds=60, flux_seconds=60, deadline=float("inf"), batch=2,
                                    eager_batch=2, vae_batch=2, pool=8, seed=0, device="cpu", max_steps=1, amp=False)


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory):
    return save_t5_tokenizer(scenes.WORDS, tmp_path_factory.mktemp("t5tok"), flux_models.T5_MAX_TOKENS, CAPTIONS)


@pytest.fixture(scope="module")
def clip():
    return flux_models.load_clip()


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory, t5_tokenizer, clip):
    """A pipeline folder written by the trainer's Saver (fp16 weights, untrained)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("flux")
    t5_dir = Path(t5_tokenizer.name_or_path)
    clip, clip_tokenizer = clip
    vae = flux_models.make_flux_vae().eval()
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    saver = flux_train.Saver(out, vae, clip, clip_tokenizer, t5_tokenizer, shift=2.0,
                             tokenizer_dirs=dict(tokenizer=flux_models.SD_SAMPLE / "tokenizer", tokenizer_2=t5_dir))
    transformer, t5 = flux_models.make_flux_transformer(), flux_models.make_t5(len(t5_tokenizer))
    saver.save(transformer, list(transformer.parameters()), t5, list(t5.parameters()), final=True)
    return out / "shapes-flux"


def test_t5_tokenizer_follows_t5_conventions(t5_tokenizer):
    assert (t5_tokenizer.pad_token_id, t5_tokenizer.eos_token_id, t5_tokenizer.unk_token_id) == (0, 1, 2)
    ids = t5_tokenizer("two small red circles on a blue background").input_ids
    assert ids[-1] == 1 and len(ids) == 9  # one piece per word (8), </s> appended
    assert max(len(t5_tokenizer(c).input_ids) for c in CAPTIONS) <= flux_models.T5_MAX_TOKENS
    assert t5_tokenizer.tokenize("zebra") == ["\u2581", "z", "e", "b", "r", "a"]  # spelled out, not <unk>
    assert not any("extra_id" in t for t in t5_tokenizer.get_vocab())
    config = json.loads((Path(t5_tokenizer.name_or_path) / "tokenizer_config.json").read_text())
    assert config["extra_ids"] == 0 and config["model_max_length"] == flux_models.T5_MAX_TOKENS
    assert build_t5_tokenizer(scenes.WORDS).encode(CAPTIONS[0]).ids == t5_tokenizer(CAPTIONS[0]).input_ids


def test_architecture_is_flux_shaped_and_fits_the_budget(t5_tokenizer, clip):
    transformer = flux_models.make_flux_transformer()
    cfg = transformer.config
    assert cfg.num_layers >= 1 and cfg.num_single_layers >= 1 and not cfg.guidance_embeds
    assert sum(cfg.axes_dims_rope) == cfg.attention_head_dim
    assert cfg.in_channels == 4 * flux_models.LATENT_CHANNELS == 64
    assert cfg.pooled_projection_dim == flux_models.CLIP_WIDTH
    vae = flux_models.make_flux_vae()
    assert vae.config.latent_channels == 16 and 2 ** (len(vae.config.block_out_channels) - 1) == 4
    assert not vae.config.use_quant_conv and not vae.config.use_post_quant_conv
    modules = (transformer, vae, clip[0], flux_models.make_t5(len(t5_tokenizer)))
    fp16_mb = 2 * sum(flux_models.count_parameters(m) for m in modules) / 1e6
    assert fp16_mb < 14.0  # the sample's budget is 15 MB on disk


def test_adaln_zero_init_predicts_zero():
    transformer = flux_models.make_flux_transformer()
    flux_models.zero_init_modulation(transformer)
    denoiser = flux_train.Denoiser(transformer, flux_models.make_t5(150), "cpu")
    out = denoiser(torch.randn(2, 64, 64), torch.randint(0, 150, (2, 32)), torch.randn(2, 128), torch.rand(2))
    assert out.shape == (2, 64, 64) and torch.count_nonzero(out) == 0


def test_training_grid_is_the_pipeline_schedule():
    """The sigmas trained on exactly are the ones FluxPipeline visits (it passes linspace(1, 1/n, n))."""
    import numpy as np

    for steps in (2, 4, 8):
        scheduler = flux_models.make_scheduler(2.0)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
        assert torch.allclose(scheduler.sigmas[:-1], flux_models.sampler_sigmas(steps, 2.0), atol=1e-6)
    grid = torch.cat([flux_models.sampler_sigmas(k, 2.0) for k in flux_train.GRID_STEPS])
    sigmas = flux_train.sample_sigmas(20000, 2.0, grid, torch.Generator().manual_seed(0))
    assert sigmas.min() > 0 and sigmas.max() <= 1
    # 4 of the grid's 18 points are sigma=1 (every schedule starts there): 20% * 4/18 = 4.4%
    assert 0.035 < (sigmas == 1).float().mean() < 0.055
    assert 0.6 < sigmas.median() < 0.75  # logit-normal shifted by 2: median 2/3


def test_velocity_target_matches_the_euler_step():
    """Trained target v = noise - x0: one exact Euler step of the shipped scheduler from sigma to 0
    lands on x0, i.e. training and FlowMatchEulerDiscreteScheduler agree on sign and timestep."""
    scheduler = flux_models.make_scheduler(2.0)
    scheduler.set_timesteps(sigmas=[1.0])
    x0, noise = torch.randn(1, 64, 64), torch.randn(1, 64, 64)
    sigma = scheduler.sigmas[0]
    noisy = (1 - sigma) * x0 + sigma * noise
    out = scheduler.step(noise - x0, scheduler.timesteps[0], noisy).prev_sample
    assert torch.allclose(out, x0, atol=1e-5)
    assert scheduler.timesteps[0] / 1000 == sigma  # FluxPipeline feeds timestep / 1000 = sigma


def test_one_step_of_each_stage(tmp_path, t5_tokenizer, clip):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path)
    pool = ScenePool(8, 0, "cpu")
    vae = flux_models.make_flux_vae()
    images, _, foreground = pool.batch(1)
    # The VAE is convolutional: a 32x32 crop exercises the same code in a quarter of the time.
    images, foreground = images[..., 16:48, 16:48], foreground[..., 16:48, 16:48]
    loss, kl, recon = flux_train.vae_loss(vae, images * 2 - 1, foreground)
    loss.backward()
    assert torch.isfinite(loss) and recon.shape == images.shape
    assert all(p.grad is not None for p in vae.encoder.parameters())

    bank = flux_train.CaptionBank(pool.captions, t5_tokenizer, *clip, "cpu")
    assert bank.t5_ids.shape == (9, flux_models.T5_MAX_TOKENS) and bank.pooled.shape == (9, 128)
    transformer = flux_models.make_flux_transformer()
    flux_models.zero_init_modulation(transformer)
    t5 = flux_models.make_t5(len(t5_tokenizer))
    denoiser = flux_train.Denoiser(transformer, t5, "cpu")
    grid = torch.cat([flux_models.sampler_sigmas(k, 2.0) for k in flux_train.GRID_STEPS])
    g = torch.Generator().manual_seed(0)
    inputs, target = flux_train.flux_inputs(cfg, pool.batch(2), vae.eval(), bank, grid, g)
    noisy, t5_ids, pooled, sigma = inputs
    assert noisy.shape == target.shape == (2, 64, 64) and t5_ids.shape == (2, 32) and sigma.shape == (2,)
    loss = flux_train.flux_loss(cfg, denoiser, inputs, target)
    loss.backward()
    assert torch.isfinite(loss) and transformer.proj_out.weight.grad.abs().sum() > 0


def test_saved_pipeline_loads_into_stock_flux_pipeline(saved_pipeline):
    from diffusers import FluxPipeline
    from tokenizers import Tokenizer

    index = json.loads((saved_pipeline / "model_index.json").read_text())
    assert index["tokenizer_2"] == ["transformers", "T5TokenizerFast"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    pipe = FluxPipeline.from_pretrained(saved_pipeline)  # no dtype: everything must come back float32
    assert {m.dtype for m in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer)} == {torch.float32}
    assert pipe.vae_scale_factor == 4 and pipe.vae.config.shift_factor == pytest.approx(0.1)
    assert not pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 2.0
    pipe.set_progress_bar_config(disable=True)
    image = pipe("two small red circles on a blue background", num_inference_steps=2, guidance_scale=0.0,
                 height=64, width=64, max_sequence_length=flux_models.T5_MAX_TOKENS,
                 generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    # Shipped tokenizers carry no padding state: a torch-free runtime gets the unpadded ids.
    for sub in ("tokenizer", "tokenizer_2"):
        raw = json.loads((saved_pipeline / sub / "tokenizer.json").read_text())
        assert raw["padding"] is None and raw["truncation"] is None
    raw = Tokenizer.from_file(str(saved_pipeline / "tokenizer_2" / "tokenizer.json"))
    assert raw.encode(CAPTIONS[1]).ids == pipe.tokenizer_2(CAPTIONS[1]).input_ids
    fp32 = saved_pipeline.with_name("shapes-flux-fp32")
    assert (fp32 / "model_index.json").exists()


def test_choose_prefers_deterministic_and_the_default_shift():
    def setting(shift, stochastic=False, steps=4):
        return dict(steps=steps, shift=shift, stochastic=stochastic, true_cfg=1.0, weights="fp16")

    meta = dict(default_shift=2.0,
                settings={"s2_det_4": setting(2.0), "s1_det_4": setting(1.0), "s3_sto_4": setting(3.0, True),
                          "s1_det_8": setting(1.0, steps=8)},
                analyser={"s2_det_4": {"all": 0.40}, "s1_det_4": {"all": 0.40}, "s3_sto_4": {"all": 0.50},
                          "s1_det_8": {"all": 0.90}})
    assert flux_eval.choose(meta, allow_stochastic=False) == "s2_det_4"
    assert flux_eval.choose(meta, allow_stochastic=True) == "s3_sto_4"
    assert flux_eval.Setting(4, 1.5, stochastic=True).name == "s1.5_sto_4"


def test_cuda_graph_failure_falls_back_with_weights_restored(tmp_path):
    """Without CUDA, graph capture fails: the trainer must get None (eager) and the exact weights back
    (the check perturbs them in place)."""
    transformer = flux_models.make_flux_transformer()
    t5 = flux_models.make_t5(150)
    denoiser = flux_train.Denoiser(transformer, t5, "cpu")
    params = list(transformer.parameters()) + list(t5.parameters())
    before = [p.detach().clone() for p in params]
    inputs = (torch.randn(1, 64, 64), torch.randint(0, 150, (1, 32)), torch.randn(1, 128), torch.rand(1))
    graphed, stats = flux_train.try_cuda_graphs(_cfg(tmp_path), denoiser, inputs, torch.randn(1, 64, 64), params)
    assert graphed is None and stats["used"] is False and "error" in stats
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_cuda_graph_path_calls_and_checks_like_torch(tmp_path, monkeypatch):
    """The graph path on CPU, with make_graphed_callables replaced by a stand-in that keeps torch's
    calling convention (one callable: sample_args is its argument tuple; warm-up runs
    callable(*sample_args); the module comes back): the check must pass and hand back the module."""
    def fake_make_graphed_callables(module, sample_args, allow_unused_input=False):
        assert isinstance(module, torch.nn.Module) and all(isinstance(a, torch.Tensor) for a in sample_args)
        module(*sample_args)  # torch's warm-up call
        return module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_make_graphed_callables)
    transformer, t5 = flux_models.make_flux_transformer(), flux_models.make_t5(150)
    flux_models.zero_init_modulation(transformer)
    denoiser = flux_train.Denoiser(transformer, t5, "cpu")
    params = list(transformer.parameters()) + list(t5.parameters())
    before = [p.detach().clone() for p in params]
    inputs = (torch.randn(1, 64, 64), torch.randint(0, 150, (1, 32)), torch.randn(1, 128), torch.rand(1))
    graphed, stats = flux_train.try_cuda_graphs(_cfg(tmp_path), denoiser, inputs, torch.randn(1, 64, 64), params)
    assert stats["used"] is True, stats
    assert stats["output_rel_err"] == 0 and stats["grad_rel_err"] == 0
    assert isinstance(graphed, flux_train.Denoiser) and graphed is not denoiser
    assert graphed.transformer is transformer and graphed.t5 is t5  # shares the trained parameters
    assert all(torch.equal(a, b) for a, b in zip(before, params))  # perturbation undone


SHIPPED = Path(__file__).resolve().parents[2] / "samples" / "shapes-flux"


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="samples/shapes-flux has no weights yet")
def test_shipped_sample_fits_and_draws():
    from diffusers import FluxPipeline

    size_mb = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) / 1e6
    samples_mb = sum(f.stat().st_size for f in SHIPPED.parent.rglob("*") if f.is_file()) / 1e6
    assert size_mb < 15 and samples_mb < 45, (size_mb, samples_mb)
    pipe = FluxPipeline.from_pretrained(SHIPPED)
    assert not pipe.scheduler.config.use_dynamic_shifting and not pipe.transformer.config.guidance_embeds
    pipe.set_progress_bar_config(disable=True)
    image = pipe("two small red circles on a blue background", num_inference_steps=4, guidance_scale=0.0,
                 height=64, width=64, max_sequence_length=flux_models.T5_MAX_TOKENS,
                 generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and image.std() > 0.02  # not a flat field
