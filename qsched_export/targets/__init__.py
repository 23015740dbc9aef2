"""Build targets: each turns an exported artifact folder into a runnable one, behind one small
interface: a module with `NAME` and `build(artifact_dir, options: BuildOptions) -> Path`.

- `tensorrt`: engines built on this device (contract-checked first), see `tensorrt.py`;
  `bundle.py` packages an artifact to build on a Jetson instead.
- `onnxruntime`: ONNX Runtime-optimized graphs on explicit execution providers.
- `ort-mobile`: ORT-format graphs and the operator config of a reduced ONNX Runtime build.

Torch-free: `build --from BUNDLE` runs these on a device with only the runtime extra.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from qsched_export.targets.options import BuildOptions
from runtimes.schemes import TARGETS

_MODULES = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "ort-mobile": "ort_mobile"}

__all__ = ["TARGETS", "BuildOptions", "build"]


def build(artifact_dir: str | Path, options: BuildOptions, *, verify=None) -> Path:
    """Build `options.target` from an exported artifact into `options.out_dir` (atomically).
    `verify(staging_folder)` runs on the finished build before it replaces `out_dir`; raising there
    keeps the previous output."""
    return importlib.import_module(f"qsched_export.targets.{_MODULES[options.target]}").build(artifact_dir, options, verify=verify)
