"""`qsched-export run --artifact DIR --prompt TEXT --out image.png`: text to image with a built
artifact, without torch."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from qsched_export.cli.check import provider_list
from qsched_export.cli.common import console, user_errors


def run(
    artifact: Path = typer.Option(..., "--artifact", help="Artifact folder (export or build output)."),
    prompt: str = typer.Option(..., "--prompt", help="The text prompt."),
    out: Path = typer.Option(Path("image.png"), "--out", help="PNG to write."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (numpy default_rng)."),
    provider: str = typer.Option("cpu", "--provider", help="ONNX Runtime execution provider: cpu, cuda or tensorrt."),
) -> None:
    """Generate an image from a prompt with an artifact's graphs or engines."""
    from runtimes.manifest import ArtifactError
    from runtimes.pipeline import Text2ImagePipeline, save_png

    with user_errors():
        if not prompt.strip():
            raise ArtifactError("empty prompt", "pass a non-empty --prompt")
        pipe = Text2ImagePipeline(artifact, provider_list(provider))
        start = time.perf_counter()
        result = pipe([prompt] * pipe.batch, seed=seed)
        seconds = time.perf_counter() - start
        save_png(result.image[0], out)
    console.print(f"wrote {out} ({pipe.description}, {seconds:.2f} s)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
