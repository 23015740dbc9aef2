"""`qsched-export` command line. Thin: each command module parses options, calls the Python API,
prints, and maps errors to one line and an exit code (see `common.run_command`).

Torch-side modules are imported only inside the commands that need them, so `build --from`,
`check`, `run` and `info` work on a Jetson with only numpy and onnxruntime or tensorrt.
"""

from __future__ import annotations

import importlib

import typer

from qsched_export import __version__

# One module per command group; each defines `register(app)`.
COMMAND_MODULES = ("info", "generate", "calibrate", "export", "build", "check", "run")

app = typer.Typer(
    name="qsched-export",
    help="Export few-step text-to-image samplers with Q-Sched coefficients to ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qsched-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """qsched-export: calibrate, export, build and check few-step diffusion samplers."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"qsched_export.cli.{_name}").register(app)


def main() -> None:
    app()
