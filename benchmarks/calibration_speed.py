"""Calibration speed and quality: a grid on the embedded sample (or a tiny model if it is absent),
batched vs one-by-one, grid points per second, and JAQ of FP32 / naive quantized / Q-Sched.

    python benchmarks/calibration_speed.py --grid 20 --prompts 5 --steps 4 --scheme w4a8 --out calib_speed.json
    python benchmarks/calibration_speed.py --device cuda --grid 20 --out calib_speed_gpu.json

One-by-one (one coefficient set per denoiser call) is timed on `--one-by-one` grid points and
reported per point; the batched run evaluates the whole grid.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _tiny_assets(folder: Path) -> tuple[str, str]:
    from qsched_export.testing import save_tiny_clip, save_tiny_sd

    return str(save_tiny_sd(folder / "sd")), str(save_tiny_clip(folder / "judge"))


def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    """`fn()` and its wall time in seconds; CUDA runs asynchronously, so synchronise on both sides."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def describe_device(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def open_session(model: str | None, judge: str | None, prompts: int, folder: Path, **config):
    """`calibration.api.prepare` on the first `prompts` lines of samples/prompts/calibration.txt
    (written to `folder`); `config` holds the other CalibrationConfig fields."""
    from calibration.api import SAMPLE_PROMPTS, CalibrationConfig, prepare

    lines = [ln.strip() for ln in SAMPLE_PROMPTS.read_text().splitlines() if ln.strip()][:prompts]
    prompt_file = folder / "prompts.txt"
    prompt_file.write_text("\n".join(lines) + "\n")
    return prepare(CalibrationConfig(model=model, prompts_file=prompt_file, judge=judge, progress=False, **config).validate())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder (default: the embedded sample, else a tiny model built in code)")
    p.add_argument("--judge", help="open_clip folder or NAME@PRETRAINED (default: the sample's judge, else a tiny one)")
    p.add_argument("--scheme", default="w4a8")
    p.add_argument("--grid", type=int, default=20)
    p.add_argument("--prompts", type=int, default=5, help="how many calibration prompts (from samples/prompts/calibration.txt)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64, help="images per denoiser call in the batched run")
    p.add_argument("--one-by-one", type=int, default=8, help="grid points timed one coefficient set per call")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=Path("calibration_speed.json"))
    args = p.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from calibration.api import SAMPLE_JUDGE
    from calibration.search import SearchSpace, coefficients
    from qsched_export.pipeline import SAMPLE_MODEL
    from qsched_export.sampler import QSchedCoefficients
    from runtimes.files import atomic_file

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="calib-bench-")
    model, judge = args.model, args.judge
    if model is None and not (SAMPLE_MODEL / "model_index.json").is_file():
        model, judge = _tiny_assets(Path(tmp.name))
        label = "tiny model built in code (the embedded sample is absent)"
    else:
        label = model or "samples/shapes-sd"
        judge = judge or (str(SAMPLE_JUDGE) if SAMPLE_JUDGE.is_dir() else None)
    session = open_session(model, judge, args.prompts, Path(tmp.name), schemes=(args.scheme,), steps=args.steps, space=SearchSpace(args.grid),
                           guidance=args.guidance, device=args.device, batch_size=args.batch_size)
    prompts = session.prompts
    unet, report = session.simulated_model(args.scheme)
    ones = QSchedCoefficients.ones(session.plan.num_steps)
    fp32 = float(session.evaluator(session.backbone.model).evaluate([ones])["jaq"][0])
    points = [coefficients(pt, session.plan.num_steps) for pt in session.config.space.points()]

    batched = session.evaluator(unet)
    naive = float(batched.evaluate([ones])["jaq"][0])
    terms, t_batched = timed(lambda: batched.evaluate(points), args.device)
    grid = terms["jaq"]

    single = session.evaluator(unet, batch_size=len(prompts))  # one coefficient set per denoiser call
    subset = points[: args.one_by_one]
    _, t_single = timed(lambda: single.evaluate(subset), args.device)

    best = int(torch.argmax(grid))
    pps_batched, pps_single = len(points) / t_batched, len(subset) / t_single
    result = {
        "model": label, "scheme": args.scheme, "grid": args.grid, "grid_points": len(points), "prompts": len(prompts), "steps": args.steps,
        "guidance": args.guidance, "device": describe_device(args.device),
        "batch_size": args.batch_size, "candidates_per_call": batched.per_call, "layers_quantized": len(report.quantized),
        "batched_seconds": t_batched, "batched_points_per_second": pps_batched, "batched_seconds_per_point": 1 / pps_batched,
        "one_by_one_points": len(subset), "one_by_one_seconds": t_single, "one_by_one_points_per_second": pps_single,
        "speedup": pps_batched / pps_single,
        "jaq": {"fp32": fp32, "naive": naive, "qsched_grid_best": float(grid[best])},
        "best_ramp_starts": {"latent_coeff": points[best].latent_coeff[0], "output_coeff": points[best].output_coeff[0]},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    table = Table(title=f"Calibration speed: {label}, {args.scheme}, {len(prompts)} prompts, {args.steps} steps, {result['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in [("grid points", len(points)), ("batched: s / grid", f"{t_batched:.2f}"), ("batched: points / s", f"{pps_batched:.2f}"),
                 ("one-by-one: points / s", f"{pps_single:.2f}"), ("speedup", f"{result['speedup']:.2f}x"),
                 ("JAQ fp32", f"{fp32:.4f}"), ("JAQ naive " + args.scheme, f"{naive:.4f}"), ("JAQ Q-Sched (grid best)", f"{float(grid[best]):.4f}")]:
        table.add_row(k, str(v))
    Console().print(table)
    with atomic_file(args.out) as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
