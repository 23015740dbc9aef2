"""Quality of the embedded sample under quantization, with and without Q-Sched (issues 7 and 8).

For each step count: FP32, FP32 + Q-Sched, and for each quantized scheme naive and + Q-Sched,
sampled on held-out prompts with several seeds, scored with the EVALUATION judge (shapes-clip-b,
never used for calibration): CLIPScore, CLIP-IQA, a Frechet distance on judge-b image features
against real renders of the same scenes (an FID analogue), and the procedural analyser's
accuracy. Coefficients are calibrated here with JAQ on judge a (the calibration judge). Also a
guidance sweep of FP32 and the paper's k ablation (k = 0, 2, 5) for one scheme.

Baselines (`--baselines`, on by default): the paper's SmoothQuant (calibration/smoothquant.py,
Linear layers only) for each scheme that quantizes activations, naive and + Q-Sched (k = 2).
With `--inception-weights`, also the true FID (Inception-v3, 2048 features) of each row against
the real renders; without it the JSON says why it was not computed.

    python benchmarks/quality.py --device cuda --prompts 1024 --seeds 2 --out benchmarks/results/quality.json
    python benchmarks/quality.py ... --steps 8 --append --out benchmarks/results/quality.json  # a later session adds 8 steps

Writes JSON (read by benchmarks/report.py) and an image grid; prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calibration.api import CalibrationConfig, prepare  # noqa: E402
from calibration.jaq import JAQ  # noqa: E402
from calibration.judges import ANTONYMS, load_clip  # noqa: E402
from benchmarks.image_grid import save_image_grid  # noqa: E402
from calibration.search import SearchSpace, coefficients, grid_search  # noqa: E402
from calibration.smoothquant import DEFAULT_ALPHA, applies_to, smoothquant_model  # noqa: E402
from qsched_export.pipeline import denoise_fn, draw_noise  # noqa: E402
from qsched_export.sampler import QSchedCoefficients, sample_loop  # noqa: E402
from samples.train import scenes  # noqa: E402

EVAL_JUDGE = REPO / "samples" / "judges" / "shapes-clip-b"
BASELINES = ("smoothquant",)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).
    tr(sqrtm(A B)) is the sum of the square roots of the eigenvalues of A B (real, >= 0 for
    covariance matrices), which needs no scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_covmean = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


class Sampler:
    """Samples the held-out prompts in batches with a given model (float or fake-quant), guidance,
    coefficients and seed, through the calibration session's backbone."""

    def __init__(self, backbone, prompts: list[str], device: torch.device, batch: int):
        self.backbone, self.prompts, self.device, self.batch = backbone, prompts, device, batch

    @torch.no_grad()
    def images(self, model, steps: int, guidance: float, coeffs: QSchedCoefficients | None, seed: int) -> torch.Tensor:
        backbone = self.backbone.with_settings(guidance_scale=guidance)
        plan = backbone.plan(steps)
        latents, noises = draw_noise(plan, backbone.latent_shape(len(self.prompts)), torch.Generator().manual_seed(seed))
        denoiser = backbone.denoiser(model).to(self.device)
        out = []
        for start in range(0, len(self.prompts), self.batch):
            sl = slice(start, start + self.batch)
            cond = backbone.encode(self.prompts[sl], self.device)
            x = sample_loop(denoise_fn(denoiser, cond), plan, latents[sl].to(self.device),
                            [None if n is None else n[sl].to(self.device) for n in noises],
                            None if coeffs is None else coeffs.latent_coeff, None if coeffs is None else coeffs.output_coeff)
            out.append(backbone.decode(x).float().cpu())
        return torch.cat(out)


class Scorer:
    def __init__(self, specs, prompts, device, inception_weights: Path | None):
        self.specs, self.prompts = specs, prompts
        self.judge = load_clip(str(EVAL_JUDGE), device=device)
        real = scenes.render_tensors(scenes.specs_to_tensors(specs))
        self.real_features = self._features(real)
        self.fid = None
        if inception_weights is not None:
            from benchmarks.inception_fid import InceptionFID

            self.fid = InceptionFID(inception_weights, real, device)
        self.text = self._batched(lambda s: self.judge.text_features(prompts[s]), len(prompts))
        self.iqa_text = self.judge.text_features(list(ANTONYMS))

    def _batched(self, fn, n, size=256):
        with torch.no_grad():
            return torch.cat([fn(slice(i, i + size)).float().cpu() for i in range(0, n, size)])

    def _features(self, images):
        return self._batched(lambda s: self.judge.image_features(images[s].to(self.judge.device)), len(images))

    def score(self, images: torch.Tensor) -> dict:
        feats = self._features(images)
        cos = (feats * self.text).sum(-1)
        iqa = (100 * feats @ self.iqa_text.float().cpu().T).softmax(-1)[:, 0]
        acc = scenes.analyse(images, self.specs)
        return {"clipscore": float((100 * cos.clamp(min=0)).mean()), "clip_iqa": float(iqa.mean()),
                "frechet": frechet_distance(feats.numpy().astype(np.float64), self.real_features.numpy().astype(np.float64)),
                **({"fid": self.fid(images)} if self.fid is not None else {}),
                **{f"acc_{k}": v for k, v in acc.items()}}


def mean_ci(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    half = 1.96 * arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return {"mean": float(arr.mean()), "ci95": float(half), "runs": [float(v) for v in arr]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="a shapes-trained diffusers folder (default: samples/shapes-sd; samples/shapes-flux for the flow-matching rows)")
    p.add_argument("--prompts", type=int, default=1024, help="held-out prompts per configuration")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--schemes", nargs="+", default=["w4a8", "w8a8"], help="the first also gets the k ablation")
    p.add_argument("--grid", type=int, default=20, help="calibration grid per axis")
    p.add_argument("--range", type=float, nargs=2, default=[0.8, 1.2], metavar=("LO", "HI"),
                   help="range of both ramp starts in every calibration (calibrate's --range)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--guidance-sweep", type=float, nargs="*", default=[1.5, 2.0, 2.5, 3.0, 4.0, 5.0])
    p.add_argument("--k-ablation", type=float, nargs="*", default=[0.0, 5.0], help="extra k values for the first scheme")
    p.add_argument("--batch", type=int, default=512, help="images per denoiser call when sampling")
    p.add_argument("--calib-batch", type=int, default=64, help="images per denoiser call in the calibration search")
    p.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES), help="baselines to add (none: pass the flag alone)")
    p.add_argument("--smoothquant-alpha", type=float, default=DEFAULT_ALPHA, help="SmoothQuant migration strength")
    p.add_argument("--inception-weights", type=Path,
                   help="torch-fidelity's Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth, a trusted file: it is unpickled); "
                        "adds the true FID per row, at about one 2048x2048 eigendecomposition per row and seed")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--grid-png", type=Path, help="image grid of FP32 / naive / Q-Sched for a few prompts")
    p.add_argument("--append", action="store_true",
                   help="add this run's step counts to the rows already in --out (same prompts, seeds, guidance, grid): one table from "
                        "several device sessions")
    args = p.parse_args()
    if args.inception_weights is not None and not args.inception_weights.is_file():
        p.error(f"--inception-weights {args.inception_weights} is not a file")
    if not 0 <= args.smoothquant_alpha <= 1:  # smooth_linears checks it too, but only after the FP32 rows
        p.error(f"--smoothquant-alpha must be in [0, 1], got {args.smoothquant_alpha}")

    previous = _previous_runs(args) if args.append else None
    started = time.perf_counter()
    device = torch.device(args.device)
    specs = scenes.heldout_specs(args.prompts, seed=7)
    prompts = [scenes.caption(s) for s in specs]
    scorer = Scorer(specs, prompts, device, args.inception_weights)
    results: dict = {"config": _config(args),
                     "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "runs": []}
    if previous is not None:
        results["config"]["steps"] = sorted(set(previous["config"]["steps"]) | set(args.steps))
        results["runs"] = [r for r in previous["runs"] if r["steps"] not in args.steps]
    if args.inception_weights is not None:
        results["fid"] = {"computed": True, "feature": 2048, "weights": str(args.inception_weights), "images_per_value": args.prompts,
                          "against": "real renders of the held-out scenes (scenes.render_tensors), one value per seed"}
    else:
        results["fid"] = {"computed": False, "reason": "no --inception-weights: the Inception-v3 weights are not available in this workplace "
                                                       "(no hub access) and are never downloaded; 'frechet' (judge-b features) stands in"}
    smoothed = []
    if "smoothquant" in args.baselines:
        smoothed = [s for s in args.schemes if applies_to(s)]
        results["smoothquant"] = {"alpha": args.smoothquant_alpha, "layers": "nn.Linear outside the skip list; Conv layers are not smoothed",
                                  "not_applied": {s: "Linear inputs stay float: nothing to smooth" for s in args.schemes if s not in smoothed}}

    def record(name: str, steps: int, guidance: float, unet, coeffs, **extra):
        per_seed = [scorer.score(sampler.images(unet, steps, guidance, coeffs, seed)) for seed in range(args.seeds)]
        row = {"name": name, "steps": steps, "guidance": guidance, **extra,
               "coefficients": None if coeffs is None else coeffs.to_dict(),
               "metrics": {k: mean_ci([m[k] for m in per_seed]) for k in per_seed[0]}}
        results["runs"].append(row)
        m = row["metrics"]
        fid = f" FID={m['fid']['mean']:.2f}" if "fid" in m else ""
        print(f"{name:30s} steps={steps} g={guidance:<4} FD={m['frechet']['mean']:.4f}{fid} CLIP={m['clipscore']['mean']:.2f} "
              f"IQA={m['clip_iqa']['mean']:.3f} acc={m['acc_all']['mean']:.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))  # after every row: a timeout keeps what ran

    def record_qsched(name: str, session, unet, k: float, **extra) -> QSchedCoefficients:
        """Calibrate `unet` with JAQ (CLIP-IQA weight k) on the calibration judge and record the row."""
        t0 = time.perf_counter()
        evaluator = session.evaluator(unet)
        evaluator.objective = JAQ(session.objective.similarity, session.objective.quality, k)
        search = grid_search(evaluator, space, progress=False)
        qs = coefficients(search.best, session.config.steps)
        record(name, session.config.steps, args.guidance, unet, qs, k=k, on_edge=search.on_edge,
               calibration_seconds=time.perf_counter() - t0, calibration_evaluations=search.evaluations, **extra)
        return qs

    space = SearchSpace(grid=args.grid, latent_range=tuple(args.range), output_range=tuple(args.range))
    for steps in args.steps:
        config = CalibrationConfig(model=args.model, schemes=tuple(args.schemes), steps=steps, guidance=args.guidance, device=args.device, progress=False,
                                   batch_size=args.calib_batch)
        session = prepare(config)
        sampler = Sampler(session.backbone, prompts, device, args.batch)
        fp32_unet = session.backbone.model
        t0 = time.perf_counter()
        fp32_search = grid_search(session.evaluator(fp32_unet), space, progress=False)
        fp32_qs = coefficients(fp32_search.best, steps)
        record("fp32", steps, args.guidance, fp32_unet, None)
        record("fp32+qsched", steps, args.guidance, fp32_unet, fp32_qs, calibration_seconds=time.perf_counter() - t0)
        for i, scheme in enumerate(args.schemes):
            unet, _ = session.simulated_model(scheme)
            record(f"{scheme}", steps, args.guidance, unet, None)
            qs = record_qsched(f"{scheme}+qsched", session, unet, 2.0)
            for k in (args.k_ablation if i == 0 and steps == args.steps[0] else []):
                record_qsched(f"{scheme}+qsched (k={k:g})", session, unet, k)
            if args.grid_png and steps == args.steps[0] and i == len(args.schemes) - 1:
                save_grid(sampler, fp32_unet, unet, scheme, qs, steps, args.guidance, args.grid_png)
            if scheme in smoothed:
                sq_unet, _ = smoothquant_model(session, scheme, args.smoothquant_alpha)
                record(f"{scheme} smoothquant", steps, args.guidance, sq_unet, None, alpha=args.smoothquant_alpha)
                record_qsched(f"{scheme} smoothquant+qsched", session, sq_unet, 2.0, alpha=args.smoothquant_alpha)
        if steps == args.steps[0]:
            for g in args.guidance_sweep:
                if g != args.guidance:
                    record("fp32 guidance sweep", steps, g, fp32_unet, None)
    results["seconds"] = time.perf_counter() - started + (previous["seconds"] if previous else 0)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"done in {results['seconds']:.0f}s -> {args.out}")


def _config(args) -> dict:
    """The command-line settings as the JSON records them."""
    # A path is recorded as given, but a machine's absolute folder is not: only the file's name.
    return {k: ((v.name if v.is_absolute() else str(v)) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# The settings rows of one table must share; steps, schemes and what else a run adds may differ.
_SHARED = ("prompts", "seeds", "guidance", "grid", "range", "batch", "calib_batch", "smoothquant_alpha", "inception_weights")


def _previous_runs(args) -> dict:
    if not args.out.is_file():
        sys.exit(f"error: --append needs an existing --out file, {args.out} is missing; drop --append for a new table")
    previous = json.loads(args.out.read_text())
    if "seconds" not in previous:
        sys.exit(f"error: {args.out} is a run that was cut short; rerun its step counts instead of appending to it")
    now = _config(args)
    differ = [k for k in _SHARED if previous["config"].get(k) != now[k]]
    if differ:
        sys.exit(f"error: --append to {args.out} with different {', '.join(differ)}; use its settings or a new --out")
    return previous


def save_grid(sampler, fp32_unet, quant_unet, scheme, qs, steps, guidance, path: Path, n: int = 8) -> None:
    sub = Sampler(sampler.backbone, sampler.prompts[:n], sampler.device, n)
    rows = {"FP32": sub.images(fp32_unet, steps, guidance, None, 0), scheme.upper(): sub.images(quant_unet, steps, guidance, None, 0),
            f"{scheme.upper()} + Q-Sched": sub.images(quant_unet, steps, guidance, qs, 0)}
    save_image_grid(rows, sub.prompts, f"held-out prompts, {steps} steps, guidance {guidance}", path)


if __name__ == "__main__":
    main()
