"""`qsched-export` command line. Thin: each command module parses options, calls the Python API,
prints, and maps errors to one line and an exit code (`common.user_errors`; the codes are listed
in `common`'s docstring and the `--help` epilog).

Torch-side modules are imported only inside the commands that need them, so `build --from`,
`check`, `run` and `info` work on a Jetson with only numpy and onnxruntime or tensorrt.
"""

from __future__ import annotations

import importlib
import sys

import typer

from qsched_export import __version__
from qsched_export.cli.common import EXIT_USAGE, print_error, start_cli

# One module per command group; each defines `register(app)`.
COMMAND_MODULES = ("info", "generate", "calibrate", "export", "build", "check", "run")

app = typer.Typer(
    name="qsched-export",
    help="Export few-step text-to-image samplers with Q-Sched coefficients to ONNX Runtime and TensorRT.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog="Exit codes: 0 success; 1 an error you can fix (one line on stderr) or a failed parity check; 2 a usage error; "
           "130 interrupted (Ctrl-C or SIGTERM), outputs left as they were.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qsched-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """qsched-export: calibrate, export, build and check few-step diffusion samplers."""


# The click that typer runs on (typer 0.2x vendors it as typer._click), for its exception classes.
_click_errors = importlib.import_module(typer.BadParameter.__module__)
_NO_ARGS = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2

for _name in COMMAND_MODULES:
    importlib.import_module(f"qsched_export.cli.{_name}").register(app)


def main() -> None:
    """The console script: start-up, then the app with click's error printing replaced by one line."""
    start_cli()
    try:
        code = app(standalone_mode=False, prog_name="qsched-export")  # the documented name, however it was started
    except _NO_ARGS as exc:
        print(exc.format_message(), file=sys.stderr)
        code = EXIT_USAGE
    except _click_errors.UsageError as exc:
        print_error(exc.format_message(), f"see {exc.ctx.command_path if exc.ctx else 'qsched-export'} --help")
        code = EXIT_USAGE
    except _click_errors.ClickException as exc:
        print_error(exc.format_message())
        code = exc.exit_code
    except typer.Abort:  # end of input at a prompt
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
