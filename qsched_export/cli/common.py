"""What every command shares: the consoles, one-line errors with exit code 1, and the default-model notice."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from runtimes.errors import UserError

console = Console()
err_console = Console(stderr=True)

# Which extra brings each torch-side package, for the message when it is missing.
_EXTRA_FOR = {"torch": "export", "diffusers": "export", "transformers": "export", "open_clip": "calibrate",
              "onnxruntime": "runtime", "tensorrt": "tensorrt", "pyiqa": "pyiqa", "matplotlib": "export"}


def fail(problem: str, fix: str | None = None) -> typer.Exit:
    """Print one line naming the problem and the fix; return the Exit to raise."""
    # Escape: messages hold literal brackets, e.g. pip install 'qsched-export[export]'.
    err_console.print(f"[bold red]error:[/] {escape(problem)}" + (f" [dim]({escape(fix)})[/]" if fix else ""), highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line and exit code 1, without a traceback."""
    try:
        yield
    except UserError as exc:
        raise fail(exc.problem, exc.fix) from None
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in _EXTRA_FOR:
            raise
        raise fail(f"this command needs the Python package {root!r}", f"pip install 'qsched-export[{_EXTRA_FOR[root]}]'") from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written") from None


def note_default_model(model: str | None) -> None:
    if model is None:
        console.print("[dim]no --model given: using the embedded sample (samples/shapes-sd)[/]")

