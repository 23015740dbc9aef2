"""`qsched-export generate`: sample a diffusers pipeline in PyTorch with the Q-Sched sampler."""

from __future__ import annotations

from pathlib import Path

import typer

from qsched_export.cli.common import console, note_default_model, user_errors


def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text prompt."),
    model: str = typer.Option(None, "--model", "-m", help="Diffusers folder or hub id (default: the embedded sample)."),
    steps: int = typer.Option(4, "--steps", "-n", help="Number of sampler steps."),
    coeffs: Path = typer.Option(None, "--coeffs", help="qsched.json or {latent_coeff, output_coeff} JSON (default: all ones)."),
    scheme: str = typer.Option(None, "--scheme", help="Which scheme's coefficients to take from a qsched.json with several."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (default: the qsched.json's, else 1.5 for the embedded sample and diffusers' 7.5 for other models)."),
    seed: int = typer.Option(0, "--seed", help="Seed; noise is drawn as diffusers does with torch.Generator().manual_seed(seed)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Swap the scheduler: lcm, tcd, euler_a, flow_euler or a diffusers class name."),
    gamma: float = typer.Option(None, "--gamma", help="TCD's gamma (eta): 0 is deterministic (default 0.3)."),
    height: int = typer.Option(None, "--height", help="Image height (default: the model's)."),
    width: int = typer.Option(None, "--width", help="Image width (default: the model's)."),
    out: Path = typer.Option(Path("image.png"), "--out", "-o", help="Output PNG."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model folder's own Python code to run."),
) -> None:
    """Generate an image in PyTorch with the Q-Sched sampler (coefficients all 1 = the stock pipeline)."""
    with user_errors():
        from qsched_export.errors import QSchedError
        from qsched_export.pipeline import default_guidance, generate as run_generate, load_pipeline, to_pil
        from qsched_export.qsched_file import QSchedFile, coefficients_for, read_coefficient_file

        if out.suffix.lower() != ".png":
            raise QSchedError(f"--out {out} is not a .png path", "pass --out image.png")
        note_default_model(model)
        pipe = load_pipeline(model, scheduler=scheduler, trust_remote_code=trust_remote_code)
        source = read_coefficient_file(coeffs) if coeffs else None
        coefficients = coefficients_for(source, steps, scheme) if source else None
        if guidance is None:
            guidance = source.guidance_scale if isinstance(source, QSchedFile) else default_guidance(model)
        _, images = run_generate(pipe, [prompt], steps=steps, guidance_scale=guidance, seed=seed,
                                 latent_coeff=coefficients.latent_coeff if coefficients else None,
                                 output_coeff=coefficients.output_coeff if coefficients else None,
                                 height=height, width=width, gamma=gamma)
        out.parent.mkdir(parents=True, exist_ok=True)
        to_pil(images)[0].save(out)
        console.print(f"wrote {out} ({images.shape[-1]}x{images.shape[-2]}, {steps} steps, guidance {guidance}, seed {seed})")


def register(app: typer.Typer) -> None:
    app.command()(generate)
