"""`qsched-export generate`: sample a diffusers pipeline in PyTorch with the Q-Sched sampler."""

from __future__ import annotations

from pathlib import Path

import typer

from qsched_export.cli.common import console, note_default_model, user_errors
from qsched_export.cli.options import lora_option, parse_loras


def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text prompt."),
    model: str = typer.Option(None, "--model", "-m", help="Diffusers folder or hub id (default: the embedded sample)."),
    lora: list[str] = lora_option(),
    steps: int = typer.Option(4, "--steps", "-n", help="Number of sampler steps."),
    coeffs: Path = typer.Option(None, "--coeffs", help="qsched.json or {latent_coeff, output_coeff} JSON (default: all ones)."),
    scheme: str = typer.Option(None, "--scheme", help="Which scheme's coefficients to take from a qsched.json with several."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Guidance scale (default: the qsched.json's, else the model's own default, printed with its reason)."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="Negative prompt with classifier-free guidance."),
    seed: int = typer.Option(0, "--seed", help="Seed; noise is drawn as diffusers does with torch.Generator().manual_seed(seed)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Swap the scheduler: lcm, tcd, euler_a, flow_euler or a diffusers class name."),
    gamma: float = typer.Option(None, "--gamma", help="TCD's gamma (eta): 0 is deterministic (default 0.3)."),
    height: int = typer.Option(None, "--height", help="Image height (default: the model's)."),
    width: int = typer.Option(None, "--width", help="Image width (default: the model's)."),
    max_sequence_length: int = typer.Option(None, "--max-sequence-length", help="T5 length of FLUX-class models (default: the model's, at most 512)."),
    out: Path = typer.Option(Path("image.png"), "--out", "-o", help="Output image (.png, .jpg, .jpeg or .webp)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model folder's own Python code to run."),
) -> None:
    """Generate an image in PyTorch with the Q-Sched sampler (coefficients all 1 = the stock pipeline)."""
    with user_errors():
        import numpy as np

        from qsched_export.errors import QSchedError
        from qsched_export.export.api import MAX_IMAGE_SIDE
        from qsched_export.pipeline import generate as run_generate, open_backbone, to_pil
        from qsched_export.qsched_file import QSchedFile, coefficients_for, read_coefficient_file
        from runtimes.files import check_output_file
        from runtimes.images import image_format, save_image

        image_format(out)  # the suffix names a format we write
        check_output_file(out)  # before loading the model: a place we may not write is refused now
        if seed < 0:
            raise QSchedError(f"seed must be >= 0, got {seed}", "pass --seed 0 or another non-negative integer")
        if guidance is not None and not (0 <= guidance < float("inf")):
            raise QSchedError(f"guidance must be a finite number >= 0, got {guidance}", "pass e.g. --guidance 1.5, or leave it out for the model's default")
        for side, value in (("height", height), ("width", width)):
            if value is not None and not 0 < value <= MAX_IMAGE_SIDE:
                raise QSchedError(f"--{side} must be between 1 and {MAX_IMAGE_SIDE} pixels, got {value}", f"pass --{side} 512, or leave it out")
        note_default_model(model)
        source = read_coefficient_file(coeffs) if coeffs else None
        coefficients = coefficients_for(source, steps, scheme) if source else None
        if guidance is None and isinstance(source, QSchedFile):
            guidance = source.guidance_scale
        backbone = open_backbone(model, scheduler=scheduler, loras=parse_loras(lora), guidance=guidance, height=height, width=width,
                                 negative_prompt=negative_prompt, text_length=max_sequence_length, trust_remote_code=trust_remote_code)
        console.print(f"[dim]{backbone.describe()}[/]", highlight=False)
        _, images = run_generate(backbone, [prompt], steps=steps, seed=seed, coefficients=coefficients, gamma=gamma)
        save_image(np.asarray(to_pil(images)[0]), out)
        console.print(f"wrote {out} ({images.shape[-1]}x{images.shape[-2]}, {steps} steps, guidance {backbone.guidance.scale:g}, seed {seed})")


def register(app: typer.Typer) -> None:
    app.command()(generate)
