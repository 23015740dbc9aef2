"""JAQ, the reference-free objective Q-Sched maximises (arXiv 2509.01624):

    JAQ = log CLIPScore(image, prompt) + k * CLIP-IQA(image)

CLIPScore is Hessel et al.'s `w * max(cos, 0)` with w = 2.5 (the log makes w a constant offset,
so it does not move the optimum). Over a set of prompts, both terms are averaged first (as
torchmetrics' CLIPScore and pyiqa report a batch) and then combined: `log(mean CLIPScore) +
k * mean CLIP-IQA`. Averaging per-image logs instead lets one image with a cosine near 0 dominate
the mean. A mean CLIPScore of 0 would give log(0), so it is floored at `CLIPSCORE_FLOOR`.
k = 2 by default: the paper saw colour distortion with small k and drift at k = 5.
"""

from __future__ import annotations

import torch

from calibration.judges import ClipModel, Judge, make_judge
from qsched_export.errors import QSchedError

CLIPSCORE_WEIGHT = 2.5
CLIPSCORE_FLOOR = 1e-4


class JAQ:
    """A judge combining a text-image similarity judge and an image-quality judge."""

    def __init__(self, similarity: Judge, quality: Judge, k: float = 2.0):
        if k < 0:
            raise QSchedError(f"k must be >= 0, got {k}", "pass --k 2 (the paper's value)")
        self.similarity, self.quality, self.k = similarity, quality, float(k)
        self.name = f"jaq(k={self.k:g}; {similarity.name}; {quality.name})"

    @classmethod
    def from_clip(cls, clip: ClipModel, k: float = 2.0) -> "JAQ":
        return cls(make_judge("clipscore", clip=clip), make_judge("clipiqa", clip=clip), k)

    def terms(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-image CLIPScore and CLIP-IQA (average them over a prompt set, then `combine`)."""
        clip_score = CLIPSCORE_WEIGHT * self.similarity.score(images, prompts).clamp_min(0)
        iqa = self.quality.score(images, prompts)
        if not (torch.isfinite(clip_score).all() and torch.isfinite(iqa).all()):
            raise QSchedError("a judge returned NaN or infinite scores (are the generated images finite?)",
                              "check the model and judge, or narrow the coefficient --range")
        return {"clip_score": clip_score, "clip_iqa": iqa}

    def combine(self, means: dict[str, torch.Tensor]) -> torch.Tensor:
        """JAQ from the terms averaged over the prompts."""
        jaq = torch.log(means["clip_score"].clamp_min(CLIPSCORE_FLOOR)) + self.k * means["clip_iqa"]
        if not torch.isfinite(jaq).all():
            raise QSchedError("JAQ is NaN or infinite", "check the model and judge, or narrow the coefficient --range")
        return jaq

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per-image JAQ (the Judge protocol)."""
        return self.combine(self.terms(images, prompts))
