"""The coefficient search: batching, first-step cache, sharding logic, edge warning, determinism."""

from __future__ import annotations

import pytest
import torch

from calibration.jaq import JAQ
from calibration.judges import load_clip
from calibration.search import Evaluator, SearchSpace, coefficients, edge_message, grid_search
from calibration_cases import PROMPTS
from qsched_export.pipeline import denoise_fn, draw_noise, open_backbone
from qsched_export.quant import observe_ranges
from qsched_export.sampler import QSchedCoefficients, sample_loop


@pytest.fixture(scope="module")
def setup(tiny_assets):
    backbone = open_backbone(str(tiny_assets / "sd"), scheduler="euler_a", guidance=2.0)  # stochastic: per-step noise must be shared too
    plan = backbone.plan(2)
    cond = backbone.encode(PROMPTS)
    latents, noises = draw_noise(plan, backbone.latent_shape(len(PROMPTS)), torch.Generator().manual_seed(0))
    model, _ = backbone.scheme_model("w8a8")
    denoiser = backbone.denoiser(model)
    with observe_ranges(model), torch.no_grad():
        sample_loop(denoise_fn(denoiser, cond), plan, latents, noises)
    objective = JAQ.from_clip(load_clip(str(tiny_assets / "judge")), k=2.0)
    return backbone, denoiser, plan, cond, latents, noises, objective


def _evaluator(setup, batch_size):
    backbone, denoiser, plan, cond, latents, noises, objective = setup
    return Evaluator(denoiser, backbone.decode, plan, cond, latents, noises, objective, PROMPTS, batch_size)


def test_batched_equals_one_by_one(setup):
    space = SearchSpace(grid=3)
    cands = [coefficients(p, 2) for p in space.points()]
    batched, single = _evaluator(setup, 64), _evaluator(setup, 1)
    assert batched.per_call == 32 and single.per_call == 1
    a, b = batched.evaluate(cands), single.evaluate(cands)
    for key in ("jaq", "clip_score", "clip_iqa"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    # One denoiser call per step after the first (cached) for the whole batch, vs per candidate.
    assert batched.denoiser_calls == 1 + 1 and single.denoiser_calls == 1 + len(cands)
    # Deterministic: the same evaluation again gives the same bits.
    again = batched.evaluate(cands)
    assert all(torch.equal(a[k], again[k]) for k in a)


def test_evaluator_follows_the_sampler(setup):
    """The cached first step and per-candidate coefficients give sample_loop's latents."""
    _, denoiser, plan, cond, latents, noises, _ = setup
    ev = _evaluator(setup, 64)
    cands = [QSchedCoefficients.ramp((0.9, 1.0), (1.1, 0.95), 2), QSchedCoefficients.ones(2)]
    got = ev.final_latents(cands).reshape(2, len(PROMPTS), *latents.shape[1:])
    for j, c in enumerate(cands):
        with torch.no_grad():
            ref = sample_loop(denoise_fn(denoiser, cond), plan, latents, noises, c.latent_coeff, c.output_coeff)
        torch.testing.assert_close(got[j], ref, rtol=0, atol=1e-5)


class _Bowl:
    """A stand-in evaluator whose JAQ is a bowl with its top at a chosen (c^x, c^eps) start."""

    def __init__(self, peak):
        self.peak = peak
        self.per_call = 4
        self.plan = type("P", (), {"num_steps": 4})()

    def _evaluate_chunk(self, cands):
        jaq = torch.tensor([-(c.latent_coeff[0] - self.peak[0]) ** 2 - (c.output_coeff[0] - self.peak[1]) ** 2 for c in cands], dtype=torch.float64)
        return {"jaq": jaq}


def test_edge_warning_only_on_the_boundary():
    inside = grid_search(_Bowl((1.0, 0.9)), SearchSpace(grid=5), refine=False, progress=False)
    assert inside.grid_best == (1.0, 1.0, 0.9, 1.0) and inside.on_edge == [] and edge_message(inside) is None
    edge = grid_search(_Bowl((1.0, 0.6)), SearchSpace(grid=5), refine=False, progress=False)
    assert edge.grid_best[2] == 0.8 and len(edge.on_edge) == 1
    assert "c^eps start 0.8 is on the edge" in edge_message(edge) and "--range 0.6 1.4" in edge_message(edge)


def test_refinement_moves_towards_the_optimum():
    res = grid_search(_Bowl((1.03, 0.87)), SearchSpace(grid=5), refine=True, refine_rounds=6, progress=False)
    assert res.grid_best == (1.0, 1.0, 0.9, 1.0)
    assert res.best_terms["jaq"] > -((1.0 - 1.03) ** 2 + (0.9 - 0.87) ** 2)
    assert res.evaluations == 25 + 6 * 8


def test_bad_space_is_a_user_error():
    from qsched_export.errors import QSchedError

    for space, msg in [(SearchSpace(grid=1), "grid must be >= 2"), (SearchSpace(latent_range=(1.2, 0.8)), "must be below"),
                       (SearchSpace(output_range=(-1.0, 1.0)), "must be positive")]:
        with pytest.raises(QSchedError, match=msg):
            space.validate()
