"""Image degradations that teach the judges what a bad image looks like (CLIP-IQA style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEGRADATIONS = ("blur", "noise", "blocky", "colour cast", "low contrast")
GOOD_PROMPTS = ("Good photo.", "a clean photo", "a sharp photo")
BAD_PROMPTS = ("Bad photo.", "a blurry photo", "a noisy photo", "a blocky photo",
               "a photo with a colour cast", "a low contrast photo")
# Which bad prompt besides "Bad photo." names each degradation.
DEGRADATION_PROMPT = dict(zip(DEGRADATIONS, BAD_PROMPTS[1:]))


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    radius = 4
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, K]
    b, c, h, w = x.shape
    # Per-sample kernels via grouped convolution, one group per (sample, channel).
    k = kernel.repeat_interleave(c, 0)
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (radius, radius, 0, 0), mode="replicate"),
                 k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def degrade(x: torch.Tensor, kind: int, strength: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply degradation DEGRADATIONS[kind] to images x [B, 3, H, W] in [0, 1].

    ``strength`` [B] in [0, 1] scales it from barely visible to obvious.
    """
    s = strength.to(x.dtype)
    name = DEGRADATIONS[kind]
    if name == "blur":
        out = _blur(x, 0.6 + 1.6 * s)
    elif name == "noise":
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        out = x + noise * (0.04 + 0.2 * s)[:, None, None, None]
    elif name == "blocky":
        factor = 4 if float(s.mean()) < 0.5 else 8  # one block size per batch keeps it vectorised
        small = F.avg_pool2d(x, factor)
        out = F.interpolate(small, scale_factor=factor, mode="nearest")
    elif name == "colour cast":
        direction = torch.randn(x.shape[0], 3, device=x.device, generator=generator)
        direction = direction / direction.norm(dim=1, keepdim=True)
        out = x + direction[:, :, None, None] * (0.12 + 0.25 * s)[:, None, None, None]
    elif name == "low contrast":
        mean = x.mean((1, 2, 3), keepdim=True)
        keep = (0.55 - 0.4 * s)[:, None, None, None]
        out = mean + (x - mean) * keep
    else:
        raise ValueError(f"kind must index one of {DEGRADATIONS}, got {kind}")
    return out.clamp(0, 1)
