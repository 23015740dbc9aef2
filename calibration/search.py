"""The Q-Sched coefficient search: a grid over the ramp starts, then an optional refinement.

Each candidate is a pair of ramps c^x = linspace(latent_start, latent_end, N) and
c^eps = linspace(output_start, output_end, N); the grid varies the starts with both ends at 1.0
(the paper), the refinement moves all four ends. A candidate's score is JAQ of its images for
all calibration prompts (terms averaged over the prompts, see jaq.py), every candidate seeing the
same initial and per-step noise.

Speed: the prompts are encoded once; many candidates share one denoiser call (the batch holds
candidates x prompts, each element with its own coefficients, which `qsched_step` takes as 1-D
tensors); the first step's denoiser call does not depend on the coefficients, so it runs once.
Sharding: with torch.distributed initialised, rank r evaluates chunks r, r + world, ... of the very
chunks one process would evaluate, and the results are all-gathered, so every rank ends with the
one-process result.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qsched_export.errors import QSchedError
from qsched_export.backbones import Conditioning
from qsched_export.pipeline import denoise_fn
from qsched_export.sampler import COEFF_RANGE, QSchedCoefficients, SamplerPlan, qsched_step

log = logging.getLogger("calibration")

# A candidate: (latent_start, latent_end, output_start, output_end).
Ends = tuple[float, float, float, float]


@dataclass(frozen=True)
class SearchSpace:
    """The grid: `grid` x `grid` ramp starts over `latent_range` (c^x) and `output_range` (c^eps)."""

    grid: int = 20
    latent_range: tuple[float, float] = (0.8, 1.2)
    output_range: tuple[float, float] = (0.8, 1.2)

    def validate(self) -> None:
        if self.grid < 2:
            raise QSchedError(f"grid must be >= 2, got {self.grid}", "pass --grid 10 or more (the paper uses 10 to 50)")
        for what, (lo, hi) in (("range", self.latent_range), ("range", self.output_range)):
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= 0:
                raise QSchedError(f"{what} {lo} {hi} must be positive", "pass e.g. --range 0.8 1.2")
            if lo >= hi:
                raise QSchedError(f"{what} start {lo} must be below its end {hi}", "pass e.g. --range 0.8 1.2")
            if lo < COEFF_RANGE[0] or hi > COEFF_RANGE[1]:
                raise QSchedError(f"{what} {lo:g} {hi:g} leaves the plausible coefficient range {COEFF_RANGE[0]:g}..{COEFF_RANGE[1]:g}",
                                  "pass e.g. --range 0.8 1.2 (the paper's neighbourhood of 1)")

    def axis(self, which: str) -> list[float]:
        lo, hi = self.latent_range if which == "latent" else self.output_range
        return [lo + (hi - lo) * i / (self.grid - 1) for i in range(self.grid)]

    def points(self) -> list[Ends]:
        """Row-major: latent start varies slowest."""
        return [(ls, 1.0, es, 1.0) for ls in self.axis("latent") for es in self.axis("output")]


def coefficients(ends: Ends, num_steps: int) -> QSchedCoefficients:
    return QSchedCoefficients.ramp((ends[0], ends[1]), (ends[2], ends[3]), num_steps)


class Evaluator:
    """Scores coefficient candidates: samples every calibration prompt with each candidate's
    coefficients from fixed noise, decodes, and averages the objective's terms over the prompts.

    Args:
        denoiser: a backbone denoiser (`Backbone.denoiser`, over the float or fake-quant model).
        decode: latents -> images in [0, 1].
        plan: the sampler plan.
        cond: the prompts' conditioning (encoded once).
        latents, noises: initial latent `(P, C, H, W)` and per-step noise (fixed: one seed).
        objective: `JAQ` (terms averaged over the prompts, then combined) or any judge (its
            per-image score averaged over the prompts).
        prompts: the P calibration prompts.
        batch_size: images per denoiser call (candidates per call = batch_size // P, at least 1).
    """

    def __init__(self, denoiser, decode: Callable[[torch.Tensor], torch.Tensor], plan: SamplerPlan, cond: Conditioning,
                 latents: torch.Tensor, noises: Sequence[torch.Tensor | None], objective, prompts: list[str], batch_size: int = 64):
        self.denoiser, self.decode, self.plan, self.cond = denoiser, decode, plan, cond
        self.latents, self.noises, self.objective, self.prompts = latents, list(noises), objective, list(prompts)
        self.per_call = max(1, batch_size // len(prompts))
        self.device = latents.device
        x0 = latents * plan.init_noise_sigma
        model_input = x0 / plan.input_divisors[0] if plan.input_divisors[0] != 1.0 else x0
        with torch.no_grad():
            # Step 0 sees the same input whatever the coefficients: run it once.
            self._first_output = denoise_fn(denoiser, cond)(model_input, plan.timesteps[0], 0)
        self.denoiser_calls = 1

    @torch.no_grad()
    def final_latents(self, candidates: Sequence[QSchedCoefficients]) -> torch.Tensor:
        """Final latents `(len(candidates) * P, C, H, W)`, candidate-major, in one batch."""
        g, p, plan = len(candidates), len(self.prompts), self.plan
        run = denoise_fn(self.denoiser, self.cond.repeat(g))
        reps = (g,) + (1,) * (self.latents.ndim - 1)
        x = self.latents.repeat(reps) * plan.init_noise_sigma
        for i in range(plan.num_steps):
            if i == 0:
                out = self._first_output.repeat(reps)
            else:
                model_input = x / plan.input_divisors[i] if plan.input_divisors[i] != 1.0 else x
                out = run(model_input, plan.timesteps[i], i)
                self.denoiser_calls += 1
            cx = torch.tensor([c.latent_coeff[i] for c in candidates], device=self.device).repeat_interleave(p)
            ce = torch.tensor([c.output_coeff[i] for c in candidates], device=self.device).repeat_interleave(p)
            noise = None if self.noises[i] is None else self.noises[i].repeat(reps)
            x = qsched_step(plan, i, x, out, noise, cx, ce)
        return x

    def evaluate(self, candidates: Sequence[QSchedCoefficients]) -> dict[str, torch.Tensor]:
        """Mean objective terms over the prompts, `(len(candidates),)` each, in chunks of `per_call`."""
        results: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(candidates), self.per_call):
            results.append(self._evaluate_chunk(candidates[start:start + self.per_call]))
        return {k: torch.cat([r[k] for r in results]) for k in results[0]}

    def _evaluate_chunk(self, candidates: Sequence[QSchedCoefficients]) -> dict[str, torch.Tensor]:
        g, p = len(candidates), len(self.prompts)
        images = self.decode(self.final_latents(candidates))
        if hasattr(self.objective, "combine"):  # JAQ: average the terms over the prompts, then combine
            means = {k: v.reshape(g, p).double().mean(dim=1) for k, v in self.objective.terms(images, self.prompts * g).items()}
            return {**means, "jaq": self.objective.combine(means)}
        return {"jaq": self.objective.score(images, self.prompts * g).reshape(g, p).double().mean(dim=1)}


@dataclass
class SearchResult:
    best: Ends
    best_terms: dict[str, float]
    grid_best: Ends
    grid_jaq: list[list[float]]  # [latent start index][output start index]
    space: SearchSpace
    evaluations: int
    on_edge: list[str] = field(default_factory=list)
    refine_trace: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"grid": self.space.grid, "latent_range": list(self.space.latent_range), "output_range": list(self.space.output_range),
                "latent_starts": self.space.axis("latent"), "output_starts": self.space.axis("output"), "grid_jaq": self.grid_jaq,
                "grid_best": list(self.grid_best), "best": list(self.best), "evaluations": self.evaluations, "on_edge": self.on_edge,
                "refine_trace": self.refine_trace}


def _evaluate_sharded(evaluator: Evaluator, candidates: list[QSchedCoefficients], progress: bool, label: str) -> dict[str, torch.Tensor]:
    """Evaluate in the chunks one process would use; under torch.distributed each rank takes
    every world-th chunk and the results are all-gathered (so all ranks return the same)."""
    import torch.distributed as dist

    chunk = evaluator.per_call
    chunks = [list(range(s, min(s + chunk, len(candidates)))) for s in range(0, len(candidates), chunk)]
    sharded = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    mine = chunks[rank::world]
    local: dict[int, dict[str, list[float]]] = {}
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress or rank != 0) as bar:
        task = bar.add_task(label, total=len(mine))
        for idx in mine:
            terms = evaluator._evaluate_chunk([candidates[j] for j in idx])
            for pos, j in enumerate(idx):
                local[j] = {k: float(v[pos]) for k, v in terms.items()}
            bar.advance(task)
    if sharded:
        gathered: list[dict] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(gathered, local)
        local = {j: v for part in gathered for j, v in part.items()}
    keys = local[0].keys()
    return {k: torch.tensor([local[j][k] for j in range(len(candidates))], dtype=torch.float64) for k in keys}


def grid_search(evaluator: Evaluator, space: SearchSpace, *, refine: bool = True, refine_rounds: int = 4, progress: bool = True) -> SearchResult:
    """The grid over ramp starts, then (if `refine`) a coordinate search over all four ramp ends:
    each round tries +-step on each end (8 candidates in one batch), moves to the best if it
    improves, else halves the step; the step starts at half the grid spacing."""
    space.validate()
    steps = evaluator.plan.num_steps
    points = space.points()
    terms = _evaluate_sharded(evaluator, [coefficients(p, steps) for p in points], progress, f"grid {space.grid}x{space.grid}")
    jaq = terms["jaq"]
    if not torch.isfinite(jaq).all():
        raise QSchedError("JAQ is NaN on the grid", "narrow the coefficient --range")
    best_i = int(torch.argmax(jaq))  # first maximum: deterministic
    best, best_terms = points[best_i], {k: float(v[best_i]) for k, v in terms.items()}
    grid_best = best
    evaluations = len(points)
    trace: list[dict] = []
    if refine:
        step_x = (space.latent_range[1] - space.latent_range[0]) / (space.grid - 1) / 2
        step_e = (space.output_range[1] - space.output_range[0]) / (space.grid - 1) / 2
        for r in range(refine_rounds):
            moves = [tuple(best[j] + (sign * (step_x if j < 2 else step_e) if j == d else 0.0) for j in range(4))
                     for d in range(4) for sign in (-1.0, 1.0)]
            moves = [m for m in moves if all(COEFF_RANGE[0] <= v <= COEFF_RANGE[1] for v in m)]
            cand = _evaluate_sharded(evaluator, [coefficients(m, steps) for m in moves], progress, f"refine {r + 1}/{refine_rounds}")
            evaluations += len(moves)
            i = int(torch.argmax(cand["jaq"]))
            improved = float(cand["jaq"][i]) > best_terms["jaq"]
            if improved:
                best, best_terms = moves[i], {k: float(v[i]) for k, v in cand.items()}
            else:
                step_x, step_e = step_x / 2, step_e / 2
            trace.append({"round": r + 1, "best": list(best), "jaq": best_terms["jaq"], "moved": improved})
    gi = points.index(grid_best)
    li, ei = divmod(gi, space.grid)
    edge = []
    if li in (0, space.grid - 1):
        edge.append(f"c^x start {grid_best[0]:g} is on the edge of its range {space.latent_range[0]:g}..{space.latent_range[1]:g}")
    if ei in (0, space.grid - 1):
        edge.append(f"c^eps start {grid_best[2]:g} is on the edge of its range {space.output_range[0]:g}..{space.output_range[1]:g}")
    grid_jaq = jaq.reshape(space.grid, space.grid).tolist()
    return SearchResult(best, best_terms, grid_best, grid_jaq, space, evaluations, edge, trace)


def edge_message(result: SearchResult) -> str | None:
    if not result.on_edge:
        return None
    lo = min(result.space.latent_range[0], result.space.output_range[0])
    hi = max(result.space.latent_range[1], result.space.output_range[1])
    wider = (round(max(0.05, lo - (hi - lo) / 2), 3), round(hi + (hi - lo) / 2, 3))
    # Not "widen it" unconditionally: on the embedded sample a 0.6-1.4 range let JAQ pick c^eps
    # starts of 1.3-1.4 that doubled the held-out FD (docs/RESULTS.md, wider search range).
    return (f"the optimum lies on the edge of the search range ({'; '.join(result.on_edge)}); a wider one (e.g. --range {wider[0]} {wider[1]}) "
            "may score higher, but check its images on held-out prompts: JAQ can overfit the judge")


def save_heatmap(result: SearchResult, path: str | Path, title: str) -> None:
    """JAQ over the grid of ramp starts, with the grid optimum and the refined point marked (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space, path = result.space, Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    # Cells centred on the grid points: extend each axis by half a spacing.
    half_e = (space.output_range[1] - space.output_range[0]) / (space.grid - 1) / 2
    half_x = (space.latent_range[1] - space.latent_range[0]) / (space.grid - 1) / 2
    extent = (space.output_range[0] - half_e, space.output_range[1] + half_e, space.latent_range[0] - half_x, space.latent_range[1] + half_x)
    im = ax.imshow(result.grid_jaq, origin="lower", extent=extent, aspect="auto", cmap="viridis", interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, label="JAQ (mean over prompts)")
    bar.formatter.set_useOffset(False)
    bar.update_ticks()
    ax.plot(result.grid_best[2], result.grid_best[0], marker="o", markersize=13, markerfacecolor="none", markeredgecolor="red", mew=2,
            linestyle="none", label="grid optimum")
    if result.best != result.grid_best:
        ax.plot(result.best[2], result.best[0], marker="x", markersize=10, color="magenta", mew=2, linestyle="none", label="refined (ramp starts)")
    ax.set_xlabel("c^eps start (output_coeff)")
    ax.set_ylabel("c^x start (latent_coeff)")
    ax.set_title(title, fontsize=9, pad=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".heatmap-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
