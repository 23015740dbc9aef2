"""`qsched-export calibrate`: find Q-Sched coefficients for one or more quantization schemes."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from qsched_export.cli.common import console, err_console, note_default_model, user_errors
from qsched_export.cli.options import lora_option, parse_loras, progress_printer


class _OneLineWarnings(logging.Handler):
    """Calibration warnings (e.g. the optimum on the range edge) as one yellow line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]warning:[/] {record.getMessage()}", highlight=False, soft_wrap=True)


def calibrate(
    model: str = typer.Option(None, "--model", help="Diffusers folder or hub id (default: the embedded sample)."),
    lora: list[str] = lora_option(),
    bits: list[int] = typer.Option([], "--bits", help="8 = w8a8, 4 = w4a8, 16 = fp16; repeat for several (default 8)."),
    scheme: list[str] = typer.Option([], "--scheme", help="Any scheme by name (w8a8, w4a8, w8a16, w4a16, fp16; study-only, not exportable: w3a8, w4a6, w8a6); repeatable."),
    steps: int = typer.Option(4, "--steps", help="Sampler steps."),
    gamma: float = typer.Option(None, "--gamma", help="TCD's gamma (default 0.3); the export must use the same."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompt file, one a line (default: samples/prompts/calibration.txt)."),
    grid: int = typer.Option(20, "--grid", help="Grid size per axis (the paper: 10 to 50)."),
    k: float = typer.Option(2.0, "--k", help="JAQ weight of CLIP-IQA."),
    judge: str = typer.Option(None, "--judge", help="open_clip folder, or NAME@PRETRAINED (a tag or a checkpoint file) (default: the sample's judge, else ViT-L-14@openai)."),
    search_range: tuple[float, float] = typer.Option((0.8, 1.2), "--range", help="Range of both ramp starts."),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Refine the four ramp ends after the grid."),
    guidance: float = typer.Option(None, "--guidance", help="Guidance scale (default: the model's own, printed with its reason: 1.5 for the embedded sample, 0 for SDXL-Turbo ...)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (one for every candidate)."),
    percentile: float = typer.Option(None, "--percentile", help="Activation range percentile (default: amax)."),
    out: Path = typer.Option(None, "--out", help="qsched.json to write, merged if it exists (default: out/<model>.qsched.json)."),
    heatmap: Path = typer.Option(None, "--heatmap", help="PNG of the JAQ surface (per scheme when several)."),
    nproc: int = typer.Option(1, "--nproc", help="Processes to shard the grid over (one per GPU with --device cuda)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when a GPU is visible)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per denoiser call."),
) -> None:
    """Calibrate Q-Sched coefficients (grid search on JAQ) for quantized schemes into one qsched.json."""
    with user_errors():
        from calibration.api import CalibrationConfig, calibrate as run_calibration
        from calibration.search import SearchSpace

        schemes = CalibrationConfig.bits_to_schemes(bits) + tuple(scheme) if (bits or scheme) else ("w8a8",)
        config = CalibrationConfig(
            model=model, schemes=tuple(dict.fromkeys(schemes)), steps=steps, gamma=gamma, prompts_file=prompts,
            space=SearchSpace(grid, tuple(search_range), tuple(search_range)), refine=refine, k=k, judge=judge, guidance=guidance,
            seed=seed, percentile=percentile, out=out, heatmap=heatmap, nproc=nproc, device=device, batch_size=batch_size,
            loras=parse_loras(lora),
        ).validate()
        note_default_model(model)
        handler = _OneLineWarnings(logging.WARNING)
        logger = logging.getLogger("calibration")
        logger.addHandler(handler)
        propagate, logger.propagate = logger.propagate, False  # one line, not also the root handler's
        try:
            qfile = run_calibration(config, progress_printer())
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
    _print_summary(qfile, config)


def _print_summary(qfile, config) -> None:
    from rich.table import Table

    table = Table(title=f"Q-Sched calibration: {qfile.model}, {qfile.steps} steps, guidance {qfile.guidance_scale:g}")
    for col in ("scheme", "c^x ramp", "c^eps ramp", "JAQ fp32", "JAQ naive", "JAQ Q-Sched", "seconds"):
        table.add_column(col, justify="right" if col.startswith(("JAQ", "sec")) else "left")
    for name in config.schemes:
        e = qfile.schemes[name]
        lx, le = e.ramp["latent_coeff"], e.ramp["output_coeff"]
        table.add_row(name, f"{lx[0]:.3f} -> {lx[1]:.3f}", f"{le[0]:.3f} -> {le[1]:.3f}", f"{e.jaq['fp32']['jaq']:.4f}",
                      f"{e.jaq['naive']['jaq']:.4f}", f"{e.jaq['qsched']['jaq']:.4f}", f"{e.search['seconds']:.1f}")
    console.print(table)
    for name in config.schemes:
        q = qfile.schemes[name].search["quantization"]
        ratio = q["bytes_after"] / q["bytes_before"] if q["bytes_before"] else 1.0
        console.print(f"{name}: {len(q['quantized'])} layers quantized, {len(q['skipped'])} kept in float; "
                      f"model parameters {q['bytes_before'] / 1e6:.2f} MB -> {q['bytes_after'] / 1e6:.2f} MB ({ratio:.2f}x)", highlight=False)
    console.print(f"wrote {config.out_path}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
