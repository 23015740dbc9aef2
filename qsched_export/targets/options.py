"""The build options every target reads: one frozen, self-validating dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qsched_export.errors import QSchedError
from runtimes.schemes import TARGETS

ORT_LEVELS = ("basic", "extended", "all")
MOBILE_PLATFORMS = ("arm", "amd64")


@dataclass(frozen=True)
class BuildOptions:
    """How to build one target.

    Args:
        target: `tensorrt`, `onnxruntime` or `ort-mobile`.
        out_dir: the built artifact folder (written atomically).
        overwrite: replace `out_dir` if it exists.
        workspace_mib: TensorRT builder workspace limit in MiB (None = TensorRT's default, the
            device memory; cap it on Orin, whose memory the CPU shares).
        builder_optimization_level: TensorRT builder optimization level, 0-5 (TensorRT's default 3).
        timing_cache: TensorRT timing cache file, read if present and written back, so rebuilds
            on the same device skip kernel timing (None = `<out_dir's parent>/tensorrt.timing-cache`).
        ort_level: ONNX Runtime graph optimization level saved into the optimized model.
            `extended` (default) keeps the model portable across CPUs; `all` adds layout
            transforms specific to this machine's CPU.
        providers: ONNX Runtime execution providers used to optimize (explicit, never a fallback).
        mobile_platform: `arm` (phones, Jetson CPU) or `amd64`, for ORT's fixed optimizations.
        fuse_attention: onnxruntime target: rewrite float attention to ORT's MultiHeadAttention
            (`ort_attention.py`), for every scheme alike. Measured on an SD1.5-sized UNet step, 2-core
            AVX512 CPU: W8A8 1.12x, FP32 1.09x faster (benchmarks/results/export_unet_fused.json).
            Off by default. Quantized schemes only (`onnxruntime.require_fusable`): its blocked
            softmax moves FP32 latents by float rounding that reaches the FP32 parity gate's max_abs
            1e-4 (1.04e-4 on the tiny LCM pipeline, 8.4e-5 unfused).
    """

    target: str
    out_dir: Path
    overwrite: bool = False
    workspace_mib: int | None = None
    builder_optimization_level: int = 3
    timing_cache: Path | None = None
    ort_level: str = "extended"
    providers: tuple[str, ...] = ("cpu",)
    mobile_platform: str = "arm"
    fuse_attention: bool = False

    def __post_init__(self):
        if self.target not in TARGETS:
            raise QSchedError(f"unknown target {self.target!r}", f"use one of {', '.join(TARGETS)}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise QSchedError(f"--workspace-mib must be >= 1, got {self.workspace_mib}", "pass a size in MiB, e.g. 2048 on Orin")
        if not 0 <= self.builder_optimization_level <= 5:
            raise QSchedError(f"builder optimization level must be 0-5, got {self.builder_optimization_level}", "TensorRT's default is 3")
        if self.ort_level not in ORT_LEVELS:
            raise QSchedError(f"ORT optimization level {self.ort_level!r} is unknown", f"use one of {', '.join(ORT_LEVELS)}")
        if self.fuse_attention and self.target != "onnxruntime":
            raise QSchedError(f"--fuse-attention is an onnxruntime build option, not one for {self.target}",
                              "drop --fuse-attention, or build --target onnxruntime")
        if self.mobile_platform not in MOBILE_PLATFORMS:
            raise QSchedError(f"mobile platform {self.mobile_platform!r} is unknown", f"use one of {', '.join(MOBILE_PLATFORMS)}")
        object.__setattr__(self, "out_dir", Path(self.out_dir))

    @property
    def timing_cache_path(self) -> Path:
        return self.timing_cache or self.out_dir.parent / "tensorrt.timing-cache"
