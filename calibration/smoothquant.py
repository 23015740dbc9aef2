"""SmoothQuant (Xiao et al. 2023), the Q-Sched paper's cheap baseline, as a simulation.

Per Linear layer and input channel j, `s_j = max|X_j|^alpha / max|W[:, j]|^(1 - alpha)`; the layer
then computes `(X / s) (W * s)^T`, which equals `X W^T` in float, but the quantizer sees
activations whose outlier channels are divided down and weights that absorb the difference.

Only `nn.Linear` layers are smoothed, as in the paper (its scales are per input channel of a
matmul); Conv layers a scheme quantizes are quantized unsmoothed. A deployment would fold `1 / s`
into the op before each layer; `SmoothedLinear` multiplies explicitly, which hands the quantizer
the same `X / s`. This is a baseline for the quality benchmark only: the exporter does not take it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from qsched_export.errors import QSchedError
from qsched_export.quant import DEFAULT_SKIP_PATTERNS, Scheme, get_scheme, skip_pattern

DEFAULT_ALPHA = 0.5
# The reference implementation's floor (mit-han-lab/smoothquant, smooth.py): a column of zero
# weights or a channel that never fires would otherwise give s = inf or 0.
SCALE_FLOOR = 1e-5


class SmoothedLinear(nn.Module):
    """`linear(x * smooth)`, with `linear.weight` already multiplied by `1 / smooth` column-wise.

    The Linear stays a child named `linear`, so `quantize_model` finds and wraps it (as
    `<layer>.linear`; no skip pattern contains "linear", so the skip list decides as before)."""

    def __init__(self, linear: nn.Linear, smooth: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("smooth", smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.smooth)


def applies_to(scheme: Scheme | str) -> bool:
    """Whether SmoothQuant has anything to do: the scheme quantizes the inputs of Linear layers."""
    linear = get_scheme(scheme).linear
    return linear is not None and linear.act_bits is not None


def smoothable_linears(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP_PATTERNS) -> dict[str, nn.Linear]:
    """The Linear layers `quantize_model` would quantize with the same skip list."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and skip_pattern(name, skip) is None}


@torch.no_grad()
def input_channel_amax(model: nn.Module, run: Callable[[], object], skip: tuple[str, ...] = DEFAULT_SKIP_PATTERNS) -> dict[str, torch.Tensor]:
    """Max |x| per input channel (the last dim) of each smoothable Linear, over everything `run()`
    feeds `model`."""
    amax: dict[str, torch.Tensor] = {}

    def observer(name):
        def hook(module, args):
            x = args[0].detach()
            a = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)
        return hook

    handles = [m.register_forward_pre_hook(observer(name)) for name, m in smoothable_linears(model, skip).items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return amax


@torch.no_grad()
def smooth_linears(model: nn.Module, amax: dict[str, torch.Tensor], alpha: float = DEFAULT_ALPHA) -> None:
    """Replace each Linear named in `amax` by a `SmoothedLinear` in place (float output unchanged)."""
    if not 0 <= alpha <= 1:
        raise QSchedError(f"SmoothQuant alpha must be in [0, 1], got {alpha}", "use 0.5 (the paper's default)")
    for name, act in amax.items():
        linear = model.get_submodule(name)
        weight_amax = linear.weight.abs().amax(0).float().clamp(min=SCALE_FLOOR)
        s = (act.pow(alpha) / weight_amax.pow(1 - alpha)).clamp(min=SCALE_FLOOR)
        linear.weight.mul_(s.to(linear.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, SmoothedLinear(linear, (1 / s).to(linear.weight.dtype)))


def smoothquant_model(session, scheme_name: str, alpha: float = DEFAULT_ALPHA):
    """`session.simulated_model(scheme_name)` with SmoothQuant first: a copy of the backbone model is
    smoothed with activation ranges observed along the FP32 sampler trajectory on the calibration
    prompts, then fake-quantized and its static ranges observed the same way; returns (model, report)."""
    scheme = get_scheme(scheme_name)
    if not applies_to(scheme):
        raise QSchedError(f"scheme {scheme.name} keeps Linear inputs in float: SmoothQuant has nothing to smooth",
                          "use a scheme that quantizes them (w8a8, w4a8)")
    skip = session.backbone.SKIP_PATTERNS
    model = copy.deepcopy(session.backbone.model)
    smooth_linears(model, input_channel_amax(model, lambda: session.fp32_trajectory(model), skip), alpha)
    return session.simulated_model(scheme_name, model)
