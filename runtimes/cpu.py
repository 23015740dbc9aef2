"""What the running CPU's integer dot-product instructions are, read without torch or onnxruntime.

It decides the int8 weight range (`runtimes.schemes.WEIGHT_RANGES`): ONNX Runtime's x86 int8
GEMM/conv kernels (MLAS, u8 activations x s8 weights) on a CPU without VNNI multiply with
AVX2's VPMADDUBSW, which adds two u8 x s8 products into a *saturating int16*; full-range int8
weights (|w| <= 127) overflow it (255 * 127 * 2 > 32767) and the output is off by many steps. A
7-bit range (|w| <= 63) cannot overflow (255 * 64 * 2 = 32640). With VNNI (VPDPBUSD
accumulates u8 x s8 products in int32), AMX (TDPBUSD, int32 tiles) or ARM's dot-product
instructions (SDOT/UDOT) every product is exact, so full-range weights cost nothing.

Linux: the `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo. macOS: `sysctl` keys.
Elsewhere the features are unknown, and callers must ask for an explicit weight range.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo names. avx_vnni is the VEX-encoded VNNI of Alder Lake and later client CPUs
# (no AVX-512); MLAS dispatches its u8s8 kernels on avx512_vnni, avx_vnni and amx_int8.
X86_EXACT_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_EXACT_INT8 = ("asimddp",)  # ARMv8.2 dot product (SDOT/UDOT)
REPORTED = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "avx512_bf16", "asimddp", "i8mm", "sve")


@dataclass(frozen=True)
class CpuInfo:
    """The machine, its architecture and the int8-relevant feature flags it reports."""

    arch: str
    model: str
    flags: frozenset[str]

    @property
    def exact_int8_dot(self) -> bool | None:
        """Whether ONNX Runtime's CPU int8 kernels are exact with full-range int8 weights here:
        True with VNNI/AMX (x86) or the dot-product extension (ARM), False on x86 without them
        (AVX2's saturating int16 pairs), None when the flags could not be read."""
        if not self.flags:
            return None
        if self.arch in ("x86_64", "amd64", "i386", "i686"):
            return any(f in self.flags for f in X86_EXACT_INT8)
        if self.arch in ("aarch64", "arm64"):
            return any(f in self.flags for f in ARM_EXACT_INT8)
        return None

    @property
    def int8_kernel(self) -> str:
        """A short name of the int8 path, for tables and manifests (e.g. "x86 avx512_vnni+amx_int8")."""
        found = [f for f in (*X86_EXACT_INT8, *ARM_EXACT_INT8) if f in self.flags]
        if found:
            return f"{self.arch} {'+'.join(found)}"
        if "avx2" in self.flags:
            return f"{self.arch} avx2 (no vnni)"
        return f"{self.arch} unknown" if not self.flags else f"{self.arch} (no int8 dot product)"

    def to_dict(self) -> dict:
        return {"arch": self.arch, "model": self.model, "flags": sorted(f for f in self.flags if f in REPORTED),
                "exact_int8_dot": self.exact_int8_dot, "int8_kernel": self.int8_kernel}


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """`CpuInfo` from the text of /proc/cpuinfo (the first processor's entry)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return CpuInfo(arch, model, frozenset(flags))


def _darwin_info(arch: str) -> CpuInfo:
    # Apple silicon has the dot-product extension (hw.optional.arm.FEAT_DotProd); Intel Macs
    # report VNNI as hw.optional.avx512vnni.
    keys = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.avx512vnni": "avx512_vnni", "hw.optional.avx2_0": "avx2"}
    flags = set()
    for key, flag in keys.items():
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == "1":
            flags.add(flag)
    return CpuInfo(arch, platform.processor(), frozenset(flags))


def probe(cpuinfo_path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """The running machine's `CpuInfo` (empty flags where they cannot be read)."""
    arch = platform.machine().lower()
    path = Path(cpuinfo_path)
    if path.is_file():
        try:
            return parse_cpuinfo(path.read_text(errors="replace"), arch)
        except OSError:
            pass
    if platform.system() == "Darwin":
        return _darwin_info(arch)
    return CpuInfo(arch, platform.processor(), frozenset())
