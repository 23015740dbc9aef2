"""A fork server that runs `python -m qsched_export ARGV` for the reliability matrix.

Importing torch, diffusers and transformers takes 7-10 s on a 2-core machine, longer than most
cases themselves; the matrix runs about 60 commands. This server imports them once, then forks
one child per command. The child is a CLI process as `python -m qsched_export` would start it: its
own working folder, environment, stdout/stderr files and exit code, and `qsched_export`'s
`__main__` run afresh by runpy. Only the import of those libraries is shared, and the server
never runs them (a fork after torch has started its thread pools could hang).

Protocol, one JSON object a line: the test writes a request, the server answers `{"pid": N}`
once the child runs (so a test can signal it) and `{"exit": CODE}` when it ends (negative: killed
by that signal). Requests: `argv`, `cwd`, `env`, `stdout`, `stderr`, and optionally
`call: "module:function"` with `args` (paths) instead of `argv` (fixture setup in a child),
`pause: "module:function"` (the child sleeps after that function returns, so a test can signal
it at a known point), `forbid: "module:function"` (reaching it ends the child with exit 97: the
case must fail before that work starts).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

# Modules, and lazy attributes ("module:attr") whose first access imports the model code behind them.
PRELOAD = ("numpy", "onnx", "onnxruntime", "PIL.Image", "tokenizers", "torch", "torch.onnx", "open_clip",
           "diffusers:StableDiffusionPipeline", "diffusers:LatentConsistencyModelPipeline", "diffusers:UNet2DConditionModel",
           "diffusers:AutoencoderKL", "diffusers:LCMScheduler", "transformers:CLIPTextModel", "transformers:CLIPTokenizer",
           "transformers:CLIPTokenizerFast", "qsched_export.cli", "qsched_export.export", "qsched_export.pipeline", "calibration.api")


def _patch(spec: str, make) -> None:
    module_name, name = spec.split(":")
    module = importlib.import_module(module_name)
    setattr(module, name, make(getattr(module, name)))


def _paused(original):
    def paused(*args, **kwargs):
        result = original(*args, **kwargs)
        time.sleep(120)
        return result
    return paused


def _forbidden(spec: str):
    def make(original):
        def forbidden(*args, **kwargs):
            os.write(2, f"matrix: reached {spec}, which this case must fail before\n".encode())
            os._exit(97)
        return forbidden
    return make


def _child(request: dict) -> None:
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)
        if request.get("pause"):
            _patch(request["pause"], _paused)
        if request.get("forbid"):
            _patch(request["forbid"], _forbidden(request["forbid"]))
        if request.get("call"):
            module_name, name = request["call"].split(":")
            getattr(importlib.import_module(module_name), name)(*map(Path, request.get("args", [])))
        else:
            import runpy

            sys.argv = ["qsched-export", *request["argv"]]
            runpy.run_module("qsched_export", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer(message: dict) -> None:
    sys.__stdout__.write(json.dumps(message) + "\n")
    sys.__stdout__.flush()


def serve() -> None:
    for spec in PRELOAD:
        module, _, attr = spec.partition(":")
        loaded = importlib.import_module(module)
        if attr:
            getattr(loaded, attr)
    _answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _answer({"exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
