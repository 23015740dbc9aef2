"""`qsched-export check --artifact DIR`: run an artifact on its golden inputs and compare with the
PyTorch references (torch-free). Also the parity table and error mapping `build` and `run` share."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from qsched_export.cli.common import console, fail, user_errors

PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt")


def provider_list(provider: str) -> tuple[str, ...]:
    if provider not in PROVIDER_CHOICES:
        raise fail(f"unknown provider {provider!r}", f"use one of {', '.join(PROVIDER_CHOICES)}")
    return (provider,)


def _num(value: float, fmt: str) -> str:
    return "inf" if math.isinf(value) else format(value, fmt)


_LABELS = {"first_latents": "step 1", "final_latents": "latents"}  # step 1: the latent after the first step


def print_report(report) -> None:
    """The parity table (limits are in parity.json; failures name theirs), then Polygraphy's closing line."""
    table = Table(title=f"parity: {report.scheme} ({report.target_form}) on {report.runtime}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("output", "vs", "max abs", "mean abs", "p99 abs", "cosine", "PSNR dB", ""):
        table.add_column(col, justify="left" if col in ("output", "vs", "") else "right", no_wrap=True)
    for c in report.comparisons:
        status = "[green]ok[/]" if c.passed else "[bold red]FAIL[/]"
        table.add_row(_LABELS.get(c.output, c.output), c.reference, _num(c.stats.max_abs, ".2e"), _num(c.stats.mean_abs, ".2e"), _num(c.stats.p99_abs, ".2e"),
                      f"{c.stats.cosine:.6f}", _num(c.stats.psnr_db, ".1f"), status)
    console.print(table)
    for c in report.comparisons:
        if not c.passed:
            console.print(f"[red]{c.output} vs {c.reference}: {'; '.join(c.failures)}[/]", highlight=False)
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]{report.summary}[/]", highlight=False)


def run_check(artifact: Path, provider: str) -> bool:
    """Check, print the table and the PASSED/FAILED line; returns whether it passed."""
    from runtimes.parity import check_artifact

    report = check_artifact(artifact, provider_list(provider), raise_on_failure=False)
    print_report(report)
    console.print(f"[dim]golden run: {report.seconds:.2f} s; wrote {artifact / 'parity.json'}[/]", highlight=False)
    return report.passed


def check(
    artifact: Path = typer.Option(..., "--artifact", help="Artifact folder (export or build output)."),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider: cpu, cuda or tensorrt (explicit; no fallback)."),
) -> None:
    """Run an artifact on its golden inputs and compare with the PyTorch FP32 and fake-quant outputs (exit 1 on failure)."""
    with user_errors():
        passed = run_check(artifact, provider)
    if not passed:
        raise fail("parity failed (the FAIL rows above)", f"see {artifact / 'parity.json'}; re-export the artifact, or recalibrate its activation ranges")


def register(app: typer.Typer) -> None:
    app.command("check")(check)
