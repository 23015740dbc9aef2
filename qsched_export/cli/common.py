"""What every command shares: the consoles, the CLI's start-up (quiet libraries, SIGTERM), one-line
errors, and the default-model notice.

Exit codes: 0 success; 1 an error the user can fix (one line on stderr naming the problem and the
fix) or a failed parity check; 2 a usage error (unknown option, bad value type); 130 interrupted,
by Ctrl-C (SIGINT) or SIGTERM alike, the shell's code for an interrupted command, after every
writer has cleaned up (the line says what was kept).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from runtimes.errors import UserError
from runtimes.files import outcomes

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error or warning stays one line, whatever the width

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Which extra brings each torch-side package, for the message when it is missing.
_EXTRA_FOR = {"torch": "export", "diffusers": "export", "transformers": "export", "open_clip": "calibrate",
              "onnxruntime": "runtime", "tensorrt": "tensorrt", "pyiqa": "pyiqa", "matplotlib": "export"}

# Read by these libraries when they are imported (inside the commands, after start-up). Set only
# where the user has not: TRANSFORMERS_VERBOSITY=info still brings transformers' log back.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "TQDM_DISABLE": "1",  # every tqdm bar (diffusers' loading, transformers' weights, hub downloads); ours are rich
}
_LIBRARY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "accelerate", "torch", "onnx", "onnxscript", "open_clip", "timm", "PIL")
_PROGRESS_SWITCHES = (("diffusers.utils.logging", "disable_progress_bar"), ("transformers.utils.logging", "disable_progress_bar"),
                      ("huggingface_hub.utils", "disable_progress_bars"))
_LIBRARY_MODULES = r"(transformers|diffusers|huggingface_hub|accelerate|torch|torchvision|onnx|onnxscript|onnxruntime|open_clip|timm)(\.|$)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, so the cleanup an interrupt runs runs for it too."""


def _terminate(signum, frame) -> None:
    # A second SIGTERM while the first one's cleanup runs ends the process at once; whatever it
    # leaves is of our naming, and the next command's clean_stale removes it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def quiet_libraries() -> None:
    """Silence third-party logging, warnings and progress bars; our own rich output stays."""
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation notices are for the developers of the code that triggers them, not for users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
    # A library imported before start-up (by a program embedding the CLI, or a test's fork server)
    # has read the variables above already: use its own switches too.
    for module, switch in _PROGRESS_SWITCHES:
        if module in sys.modules:
            getattr(sys.modules[module], switch)()


def start_cli() -> None:
    """Once, before the CLI parses anything: quiet libraries, and SIGTERM handled like Ctrl-C."""
    quiet_libraries()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def print_error(problem: str, fix: str | None = None) -> None:
    """One line on stderr naming the problem and the fix."""
    # Escape: messages hold literal brackets, e.g. pip install 'qsched-export[export]'.
    err_console.print(f"[bold red]error:[/] {escape(problem)}" + (f" [dim]({escape(fix)})[/]" if fix else ""), highlight=False, soft_wrap=True)


def fail(problem: str, fix: str | None = None, code: int = EXIT_USER_ERROR) -> typer.Exit:
    """Print one line naming the problem and the fix; return the Exit to raise."""
    print_error(problem, fix)
    return typer.Exit(code=code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (`runtimes.errors.UserError` and its subclasses) into one
    line and exit code 1, and an interrupt (SIGINT or SIGTERM) into one line saying what the
    writers kept, with exit code 130; no traceback for either. Anything else is a bug and keeps its
    traceback."""
    try:
        yield
    except UserError as exc:
        raise fail(exc.problem, exc.fix) from None
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in _EXTRA_FOR:
            raise
        raise fail(f"this command needs the Python package {root!r}", f"pip install 'qsched-export[{_EXTRA_FOR[root]}]'") from None
    except KeyboardInterrupt as exc:
        by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        kept = "; ".join(outcomes(exc)) or "nothing was written"
        raise fail(f"interrupted by {by}; {kept}", "run the command again to finish", code=EXIT_INTERRUPTED) from None


def note_default_model(model: str | None) -> None:
    if model is None:
        console.print("[dim]no --model given: using the embedded sample (samples/shapes-sd)[/]")
