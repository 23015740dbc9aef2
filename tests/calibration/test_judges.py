"""Judges through open_clip's real local-folder loading, the plug-in registry, and JAQ's guards."""

from __future__ import annotations

import math

import pytest
import torch

from calibration.jaq import CLIPSCORE_FLOOR, JAQ
from calibration.judges import JUDGES, AntonymIQAJudge, ClipScoreJudge, load_clip, make_judge, register_judge
from qsched_export.errors import QSchedError


@pytest.fixture(scope="module")
def clip(tiny_assets):
    return load_clip(str(tiny_assets / "judge"))


def test_local_folder_judge_scores(clip):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16)  # resized to the judge's 32x32 inside
    prompts = ["a red circle", "a blue square", "a red circle"]
    cos = ClipScoreJudge(clip).score(images, prompts)
    iqa = AntonymIQAJudge(clip).score(images, prompts)
    assert cos.shape == iqa.shape == (3,)
    assert (cos.abs() <= 1 + 1e-6).all() and ((iqa >= 0) & (iqa <= 1)).all()
    assert torch.equal(ClipScoreJudge(clip).score(images, prompts), cos)  # deterministic, text cache reused
    # The weights really came from the folder (a fresh random model would differ).
    import open_clip
    from qsched_export.testing import TINY_CLIP_CFG

    torch.manual_seed(123)
    other = open_clip.CLIP(**TINY_CLIP_CFG)
    assert not torch.equal(other.visual.conv1.weight, clip.model.visual.conv1.weight)


def test_clipiqa_falls_back_to_antonyms_without_pyiqa(clip):
    judge = make_judge("clipiqa", clip=clip)
    try:
        import pyiqa  # noqa: F401
        assert judge.name in ("pyiqa:clipiqa", f"clipiqa-antonym:{clip.name}")
    except ImportError:
        assert isinstance(judge, AntonymIQAJudge)


def test_registry_takes_new_judges(clip):
    @register_judge("brightness")
    class Brightness:
        name = "brightness"

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    try:
        judge = make_judge("brightness")
        jaq = JAQ(make_judge("clipscore", clip=clip), judge, k=1.0)
        images = torch.full((2, 3, 8, 8), 0.25)
        terms = jaq.terms(images, ["a", "b"])
        assert torch.allclose(terms["clip_iqa"], torch.tensor([0.25, 0.25]))
    finally:
        del JUDGES["brightness"]
    with pytest.raises(QSchedError, match="unknown judge 'nope'"):
        make_judge("nope")


class _Const:
    def __init__(self, value):
        self.value, self.name = value, "const"

    def score(self, images, prompts):
        return torch.full((images.shape[0],), self.value)


def test_jaq_combination_and_guards():
    images = torch.zeros(2, 3, 4, 4)
    jaq = JAQ(_Const(0.3), _Const(0.5), k=2.0)
    assert float(jaq.score(images, ["a", "b"])[0]) == pytest.approx(math.log(2.5 * 0.3) + 2 * 0.5)
    # A non-positive cosine is floored, not log(0).
    assert float(JAQ(_Const(-0.2), _Const(0.5)).score(images, ["a", "b"])[0]) == pytest.approx(math.log(CLIPSCORE_FLOOR) + 1.0)
    with pytest.raises(QSchedError, match="NaN or infinite"):
        JAQ(_Const(float("nan")), _Const(0.5)).score(images, ["a", "b"])
    with pytest.raises(QSchedError, match="k must be >= 0"):
        JAQ(_Const(0.3), _Const(0.5), k=-1)
