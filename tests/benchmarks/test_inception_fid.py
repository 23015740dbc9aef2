"""True FID from a local Inception weights file: nothing downloaded, FID(x, x) ~ 0, FID(x, noise) > 0."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch_fidelity import feature_extractor_inceptionv3 as fidelity_inception

# benchmarks/ and samples/ are not installed packages: import them from the repository root. (No
# conftest.py here: a second module named conftest would shadow the one tests/calibration imports.)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.inception_fid import InceptionFID  # noqa: E402
from samples.train import scenes  # noqa: E402


def _no_download(*args, **kwargs):
    raise AssertionError("torch-fidelity tried to download the Inception weights")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """torch-fidelity's Inception with its random init, saved as a weights file. Its __init__ always
    loads a state dict (downloaded when given no path): here the URL loader returns nothing and the load is skipped."""
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", return_value=None), \
            mock.patch.object(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict"):
        torch.manual_seed(0)
        net = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def real():
    return scenes.render_tensors(scenes.specs_to_tensors(scenes.heldout_specs(8, seed=7)))


def test_fid_of_the_real_set_is_zero_and_of_noise_positive(weights, real):
    # feature=64 keeps the test fast (the 2048-dim eigendecomposition alone takes 20-40 s on 2 cores).
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", _no_download):
        fid = InceptionFID(weights, real, torch.device("cpu"), feature=64)
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
    same, other = fid(real), fid(noise)
    print(f"random-init Inception, 64 features: FID(real, real) {same:.3g}, FID(real, noise) {other:.3g}")
    assert abs(same) < 1e-6 * other and other > 0


def test_standard_features_load_from_the_file(weights, real):
    with mock.patch.object(fidelity_inception, "load_state_dict_from_url", _no_download):
        fid = InceptionFID(weights, real[:2], torch.device("cpu"))
    assert fid.metric.real_features_sum.shape == (2048,) and int(fid.metric.real_features_num_samples) == 2
    loaded = torch.load(weights)
    assert torch.equal(fid.metric.inception.Conv2d_1a_3x3.conv.weight, loaded["Conv2d_1a_3x3.conv.weight"])
