"""With coefficients != 1, each family equals a hand-written reference of the Q-Sched equations
(arXiv 2509.01624), computed here in float64 from the scheduler's alphas/sigmas, independently of
the plan constants."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch

from qsched_export.sampler import make_plan, qsched_step, sample_loop

CX, CE = 0.9, 1.13


def _inputs(seed=0, shape=(2, 4, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _scheduler(name, **kw):
    base = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    return getattr(diffusers, name)(**base, **kw)


def _alpha(s, t):
    return float(s.alphas_cumprod[int(t)].double())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_lcm(prediction_type):
    s = _scheduler("LCMScheduler", prediction_type=prediction_type)
    plan = make_plan(s, 4)
    x, eps, z = _inputs()
    for i in range(4):
        t = plan.timesteps[i]
        a = _alpha(s, t)
        xs, es = CX * x.double(), CE * eps.double()
        x0 = (xs - math.sqrt(1 - a) * es) / math.sqrt(a) if prediction_type == "epsilon" else math.sqrt(a) * xs - math.sqrt(1 - a) * es
        scaled_t = t * 10.0  # LCM's timestep_scaling
        c_skip = 0.25 / (scaled_t**2 + 0.25)
        c_out = scaled_t / math.sqrt(scaled_t**2 + 0.25)
        denoised = c_skip * xs + c_out * x0
        if i < 3:
            a_prev = _alpha(s, plan.timesteps[i + 1])
            expected = math.sqrt(a_prev) * denoised + math.sqrt(1 - a_prev) * z.double()
        else:
            expected = denoised
        got = qsched_step(plan, i, x, eps, z if plan.noise_steps[i] else None, CX, CE)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_tcd(gamma):
    s = _scheduler("TCDScheduler", prediction_type="epsilon")
    plan = make_plan(s, 4, gamma=gamma)
    x, eps, z = _inputs(1)
    for i in range(4):
        a = _alpha(s, plan.timesteps[i])
        t_prev = plan.timesteps[i + 1] if i < 3 else 0
        s_prime = math.floor((1 - gamma) * t_prev)
        a_s = _alpha(s, s_prime)
        xs, es = CX * x.double(), CE * eps.double()
        x0 = (xs - math.sqrt(1 - a) * es) / math.sqrt(a)
        expected = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * es
        if gamma > 0 and i < 3:
            a_prev = _alpha(s, t_prev)
            expected = math.sqrt(a_prev / a_s) * expected + math.sqrt(1 - a_prev / a_s) * z.double()
        got = qsched_step(plan, i, x, eps, z if plan.noise_steps[i] else None, CX, CE)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_euler_ancestral_eps():
    s = _scheduler("EulerAncestralDiscreteScheduler", prediction_type="epsilon", timestep_spacing="trailing")
    plan = make_plan(s, 4)
    x, eps, z = _inputs(2)
    sigmas = [float(v) for v in s.sigmas.double()]
    for i in range(4):
        sig, sig_next = sigmas[i], sigmas[i + 1]
        sigma_up = math.sqrt(sig_next**2 * (sig**2 - sig_next**2) / sig**2)
        sigma_down = math.sqrt(sig_next**2 - sigma_up**2)
        # x_{i+1} = c^x x_i + (sigma_down - sigma_i) c^eps eps + sigma_up z   (issue 3's equation)
        expected = CX * x.double() + (sigma_down - sig) * CE * eps.double() + sigma_up * z.double()
        got = qsched_step(plan, i, x, eps, z, CX, CE)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_flow_euler_matches_equation_and_scheduler():
    s = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    plan = make_plan(s, 4)
    x, v, _ = _inputs(3)
    sigmas = [float(v_) for v_ in s.sigmas.double()]
    for i in range(4):
        expected = CX * x.double() + (sigmas[i + 1] - sigmas[i]) * CE * v.double()
        torch.testing.assert_close(qsched_step(plan, i, x, v, None, CX, CE).double(), expected, rtol=1e-5, atol=1e-5)
    # coefficients 1: the scheduler's own step, bit for bit
    s.set_timesteps(4)
    sample = x.clone()
    ours = x.clone()
    for i, t in enumerate(s.timesteps):
        sample = s.step(v, t, sample, return_dict=False)[0]
        ours = qsched_step(plan, i, ours, v, None)
    torch.testing.assert_close(ours, sample, rtol=0, atol=0)


def test_flow_euler_stochastic_matches_scheduler():
    s = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    plan = make_plan(s, 3)
    assert plan.noise_steps == (True, True, True)
    x, v, _ = _inputs(4)
    gen_ref = torch.Generator().manual_seed(5)
    s.set_timesteps(3)
    sample = x.clone()
    for t in s.timesteps:
        sample = s.step(v, t, sample, generator=gen_ref, return_dict=False)[0]
    gen = torch.Generator().manual_seed(5)
    ours = x.clone()
    for i in range(3):
        ours = qsched_step(plan, i, ours, v, torch.randn(x.shape, generator=gen))
    torch.testing.assert_close(ours, sample, rtol=0, atol=1e-6)


def test_batched_coefficients_equal_one_by_one():
    """One denoiser call can evaluate several coefficient sets: per-element coefficients in the batch."""
    s = _scheduler("TCDScheduler", prediction_type="v_prediction")
    plan = make_plan(s, 3, gamma=0.3)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 4, 5, 5, generator=g)
    noises = [torch.randn(1, 4, 5, 5, generator=g) if plan.noise_steps[i] else None for i in range(3)]
    weight = torch.randn(4, 4, generator=g)

    def denoise(x, t, i):  # a deterministic toy denoiser that depends on t
        return torch.einsum("oc,bchw->bohw", weight, x).tanh() * (1 + t / 1000)

    sets = [((0.9, 0.95, 1.0), (1.1, 1.05, 1.0)), ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)), ((1.2, 1.1, 1.0), (0.8, 0.9, 1.0))]
    singles = [sample_loop(denoise, plan, lat, noises, cx, ce) for cx, ce in sets]
    cx = torch.tensor([s_[0] for s_ in sets]).T  # (steps, B)
    ce = torch.tensor([s_[1] for s_ in sets]).T
    batched = sample_loop(denoise, plan, lat.expand(3, -1, -1, -1), [n.expand(3, -1, -1, -1) if n is not None else None for n in noises], cx, ce)
    for b, single in enumerate(singles):
        torch.testing.assert_close(batched[b:b + 1], single, rtol=1e-6, atol=1e-6)
    assert (singles[0] - singles[1]).abs().max() > 1e-3  # the coefficients really change the result
