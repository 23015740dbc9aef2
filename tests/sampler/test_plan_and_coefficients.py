from __future__ import annotations

import math

import diffusers
import pytest

from qsched_export.errors import QSchedError
from qsched_export.sampler import FAMILIES, SCHEDULER_TO_FAMILY, get_family, make_plan
from qsched_export.plan import QSchedCoefficients, SamplerPlan


def test_ramp_is_linspace():
    c = QSchedCoefficients.ramp((0.8, 1.0), (1.2, 1.0), 5)
    assert c.latent_coeff == pytest.approx((0.8, 0.85, 0.9, 0.95, 1.0))
    assert c.output_coeff == pytest.approx((1.2, 1.15, 1.1, 1.05, 1.0))
    assert QSchedCoefficients.ramp((0.9, 1.0), (1.1, 1.0), 1).latent_coeff == (0.9,)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0, 0.2, 4.5, 1e30])
def test_implausible_coefficients_rejected(bad):
    with pytest.raises(QSchedError, match="outside the plausible range 0.25..4"):
        QSchedCoefficients((1.0, bad), (1.0, 1.0))
    with pytest.raises(QSchedError, match="output_coeff holds"):
        QSchedCoefficients((1.0, 1.0), (bad, 1.0))


@pytest.mark.parametrize("edge", [0.25, 4.0])
def test_range_edges_accepted(edge):
    assert QSchedCoefficients((edge,), (edge,)).num_steps == 1


def test_length_mismatch_rejected():
    with pytest.raises(QSchedError, match="one value per step"):
        QSchedCoefficients((1.0, 1.0), (1.0,))
    with pytest.raises(QSchedError, match="for 2 steps but the sampler runs 4"):
        QSchedCoefficients.ones(2).check_steps(4)


def test_steps_below_one_rejected():
    with pytest.raises(QSchedError, match="steps must be >= 1"):
        make_plan(diffusers.LCMScheduler(), 0)


def test_unsupported_scheduler_names_the_supported_ones():
    with pytest.raises(QSchedError, match="unsupported scheduler DDIMScheduler") as info:
        make_plan(diffusers.DDIMScheduler(), 4)
    assert "LCMScheduler (lcm)" in info.value.fix
    with pytest.raises(QSchedError, match="unknown sampler family"):
        get_family("ddim")


def test_every_family_is_registered_and_round_trips():
    assert set(FAMILIES) == {"lcm", "tcd", "euler_a", "flow_euler"}
    assert set(SCHEDULER_TO_FAMILY.values()) == set(FAMILIES)
    schedulers = [diffusers.LCMScheduler(), diffusers.TCDScheduler(), diffusers.EulerAncestralDiscreteScheduler(timestep_spacing="trailing"),
                  diffusers.FlowMatchEulerDiscreteScheduler()]
    for s in schedulers:
        plan = make_plan(s, 4)
        assert plan.num_steps == 4 and all(len(v) == 4 for v in plan.constants.values())
        assert SamplerPlan.from_dict(plan.to_dict()) == plan


def test_lcm_plan_constants():
    plan = make_plan(diffusers.LCMScheduler(), 4)
    assert plan.timesteps == (999.0, 759.0, 499.0, 259.0)
    assert plan.noise_steps == (True, True, True, False)
    assert plan.constants["c_skip"][0] < 1e-6 and plan.constants["c_out"][0] == pytest.approx(1.0, abs=1e-6)
