"""`qsched-export run --artifact DIR --prompt TEXT --out image.png`: text to image with a built
artifact, without torch."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from qsched_export.cli.check import provider_list
from qsched_export.cli.common import console, err_console, user_errors


def run(
    artifact: Path = typer.Option(..., "--artifact", help="Artifact folder (export or build output)."),
    prompt: str = typer.Option(..., "--prompt", help="The text prompt."),
    out: Path = typer.Option(Path("image.png"), "--out", help="Image to write: .png, .jpg/.jpeg or .webp (the suffix picks the format)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed, 0 or more (numpy default_rng)."),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider: cpu, cuda or tensorrt."),
) -> None:
    """Generate an image from a prompt with an artifact's graphs or engines."""
    from runtimes.errors import UserError
    from runtimes.files import check_output_file
    from runtimes.images import image_format, save_image
    from runtimes.pipeline import Text2ImagePipeline, to_uint8

    with user_errors():
        # The flags and the output path are judged before the artifact is loaded.
        if not prompt.strip():
            raise UserError("empty prompt", "pass a non-empty --prompt")
        if seed < 0:
            raise UserError(f"--seed must be 0 or more, got {seed}", "NumPy's default_rng takes seeds >= 0: pass e.g. --seed 0")
        check_output_file(out)
        image_format(out)
        pipe = Text2ImagePipeline(artifact, provider_list(provider))
        _warn_if_cut(pipe, prompt)
        start = time.perf_counter()
        result = pipe([prompt] * pipe.batch, seed=seed)
        seconds = time.perf_counter() - start
        save_image(to_uint8(result.image)[0], out)
    console.print(f"wrote {out} ({pipe.description}, {seconds:.2f} s)", highlight=False)


def _warn_if_cut(pipe, prompt: str) -> None:
    """Each text encoder reads a fixed number of tokens: say when the prompt loses words."""
    dropped = pipe.dropped_tokens([prompt])
    if dropped:
        err_console.print(f"[yellow]warning:[/] the prompt is {dropped} token(s) longer than the text encoder reads; those are dropped",
                          highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
