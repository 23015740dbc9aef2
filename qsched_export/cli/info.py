"""`qsched-export info`: versions, execution providers and which targets this machine can build."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform

import typer
from rich.table import Table

from qsched_export import __version__
from qsched_export.cli.common import console

# Distribution names that provide each module (onnxruntime ships as several distributions).
_DISTS = {
    "torch": ("torch",), "torchvision": ("torchvision",), "diffusers": ("diffusers",), "transformers": ("transformers",),
    "onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "open_clip": ("open_clip_torch",), "pyiqa": ("pyiqa",), "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "tokenizers": ("tokenizers",), "cuda-python": ("cuda-python", "cuda-bindings"),
}


def package_version(module: str) -> str | None:
    for dist in _DISTS.get(module, (module,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    # JetPack installs tensorrt through apt, without pip metadata.
    return "installed" if importlib.util.find_spec(module.replace("-", "_")) else None


def cuda_devices() -> list[str]:
    """CUDA devices as torch sees them (empty without torch or without a GPU)."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return onnxruntime.get_available_providers()


def info() -> None:
    """Print versions, ONNX Runtime providers, CUDA presence and the targets this machine can build."""
    versions = Table(title=f"qsched-export {__version__} on Python {platform.python_version()} ({platform.machine()})")
    versions.add_column("package")
    versions.add_column("version")
    for module in _DISTS:
        versions.add_row(module, package_version(module) or "[dim]not installed[/]")
    console.print(versions)
    providers = ort_providers()
    gpus = cuda_devices()
    console.print(f"onnxruntime providers: {', '.join(providers) or 'none (pip install qsched-export[runtime])'}")
    console.print(f"CUDA devices: {', '.join(gpus) or 'none seen by torch'}")
    have_torch = package_version("torch") is not None
    targets = Table(title="targets")
    targets.add_column("target")
    targets.add_column("build here?")
    targets.add_row("onnxruntime", _yes_no(bool(providers), "needs onnxruntime"))
    targets.add_row("ort-mobile", _yes_no(bool(providers), "needs onnxruntime"))
    targets.add_row("tensorrt", _yes_no(package_version("tensorrt") is not None, "needs TensorRT (JetPack on Jetson, NVIDIA wheels on desktop); `bundle` works without it"))
    targets.add_row("export / calibrate (from a model)", _yes_no(have_torch, "needs torch: pip install qsched-export[calibrate]"))
    console.print(targets)


def _yes_no(ok: bool, why_not: str) -> str:
    return "[green]yes[/]" if ok else f"[yellow]no[/]: {why_not}"


def register(app: typer.Typer) -> None:
    app.command()(info)
