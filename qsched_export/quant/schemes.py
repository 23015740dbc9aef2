"""Quantization schemes: one frozen dataclass that calibration, export and the TensorRT contract
checker all read, so no module re-derives bit-widths from flags.

What each scheme quantizes (Linear = every `nn.Linear` not on the skip list, Conv = every
`nn.Conv2d` not on the skip list):

| scheme | Linear weights            | Conv weights       | activations                                   |
|--------|---------------------------|--------------------|-----------------------------------------------|
| fp32   | float32                   | float32            | float32                                       |
| fp16   | float16 (done by export)  | float16            | float16                                       |
| w8a8   | int8 (7-bit range) per    | same               | int8 static per-tensor, inputs AND outputs    |
|        | output channel            |                    |                                               |
| w4a8   | int4, groups of 32 along K| float              | int8 dynamic, per row and block of 32 along K |
|        |                           |                    | (ONNX Runtime MatMulNBits accuracy_level=4)   |
| w8a16  | int8 per output channel   | int8 per out chan. | float                                         |
| w4a16  | int4, groups of 32 along K| float              | float (TensorRT's INT4 weight-only form)      |

Conv stays float in the INT4 schemes: TensorRT takes INT4 only on 2-D weights feeding
MatMul/Gemm, and MatMulNBits is a MatMul, so there is no INT4 Conv kernel to match.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsched_export.errors import QSchedError

ACT_MODES = ("static", "dynamic", "none")
TARGETS = ("tensorrt", "onnxruntime", "ort-mobile")


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme.

    Args:
        name (`str`): the scheme's name, the key in qsched.json.
        weight_bits (`int | None`): 8 or 4 (symmetric, zero point 0), or None for float weights.
        weight_group_size (`int | None`): None = one scale per output channel; an int = one scale per
            output channel and group of that many consecutive input features (int4 only).
        act_bits (`int | None`): 8 for int8 activations, None for float activations.
        act_mode (`str`): "static" (one calibrated per-tensor scale, zero point 0), "dynamic"
            (computed at run time per row and block of `weight_group_size` input features, as ONNX
            Runtime's MatMulNBits accuracy_level=4 kernel does) or "none".
        quantize_outputs (`bool`): also fake-quantize each quantized layer's product (before the
            bias is added) with a calibrated per-tensor scale, so the exporter's full Q/DQ pattern
            fuses to QLinearMatMul/QLinearConv in ONNX Runtime.
        include_conv (`bool`): quantize Conv2d layers too (with int8 weights).
        reduce_range (`bool`): int8 weights use 7 bits ([-64, 63], scale amax / 63). ONNX Runtime's
            fused int8 kernels on x86 without VNNI (AVX2: VPMADDUBSW) add pairs of u8 x s8 products
            in int16, which saturates with full-range weights: measured on this AVX2 machine, a
            48->32 Linear fused to QLinearMatMul was off by up to 31 output steps on 24% of the
            outputs with full-range weights and bit-exact with 7-bit weights. TensorRT takes any
            symmetric int8 values, so one reduced-range calibration serves both targets.
        float_dtype (`str`): the float type of everything not quantized ("float32" or "float16").
    """

    name: str
    weight_bits: int | None = None
    weight_group_size: int | None = None
    act_bits: int | None = None
    act_mode: str = "none"
    quantize_outputs: bool = False
    include_conv: bool = False
    reduce_range: bool = False
    float_dtype: str = "float32"

    def __post_init__(self):
        if self.weight_bits not in (None, 4, 8):
            raise QSchedError(f"scheme {self.name}: weight_bits must be 4, 8 or None, got {self.weight_bits}", "use 4 or 8")
        if self.weight_bits == 4 and self.weight_group_size is None:
            raise QSchedError(f"scheme {self.name}: int4 weights need a weight_group_size", "use weight_group_size=32")
        if self.weight_group_size is not None and (self.weight_group_size < 16 or self.weight_group_size & (self.weight_group_size - 1)):
            raise QSchedError(f"scheme {self.name}: weight_group_size must be a power of two >= 16, got {self.weight_group_size}", "use 32")
        if self.act_mode not in ACT_MODES:
            raise QSchedError(f"scheme {self.name}: act_mode must be one of {', '.join(ACT_MODES)}, got {self.act_mode!r}", "pick one of them")
        if (self.act_bits is None) != (self.act_mode == "none"):
            raise QSchedError(f"scheme {self.name}: act_bits={self.act_bits} does not fit act_mode={self.act_mode!r}", "use act_bits=8 with static/dynamic, None with none")
        if self.act_bits not in (None, 8):
            raise QSchedError(f"scheme {self.name}: act_bits must be 8 or None, got {self.act_bits}", "use 8")
        if self.act_mode == "dynamic" and self.weight_group_size is None:
            raise QSchedError(f"scheme {self.name}: dynamic activations are quantized per block of weight_group_size", "set weight_group_size")
        if self.quantize_outputs and self.act_mode != "static":
            raise QSchedError(f"scheme {self.name}: output quantizers need static activation scales", "use act_mode='static'")
        if self.include_conv and self.weight_bits != 8:
            raise QSchedError(f"scheme {self.name}: Conv layers are quantized only with int8 weights", "set include_conv=False")
        if self.reduce_range and self.weight_bits != 8:
            raise QSchedError(f"scheme {self.name}: reduce_range applies to int8 weights only", "set reduce_range=False")
        if self.float_dtype not in ("float32", "float16"):
            raise QSchedError(f"scheme {self.name}: float_dtype must be float32 or float16", "pick one of them")

    @property
    def quantized(self) -> bool:
        """Whether the scheme changes any layer (fp32/fp16 do not: they need no calibration of ranges)."""
        return self.weight_bits is not None

    @property
    def weight_qbits(self) -> int | None:
        """The bits of the weight value range (7 with reduce_range): the key of numerics.QMAX."""
        return 7 if self.reduce_range else self.weight_bits

    @property
    def static_activations(self) -> bool:
        return self.act_mode == "static"

    def to_dict(self) -> dict:
        return {"name": self.name, "weight_bits": self.weight_bits, "weight_group_size": self.weight_group_size, "act_bits": self.act_bits,
                "act_mode": self.act_mode, "quantize_outputs": self.quantize_outputs, "include_conv": self.include_conv, "reduce_range": self.reduce_range,
                "float_dtype": self.float_dtype}


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("fp32"),
    Scheme("fp16", float_dtype="float16"),
    Scheme("w8a8", weight_bits=8, act_bits=8, act_mode="static", quantize_outputs=True, include_conv=True, reduce_range=True),
    Scheme("w4a8", weight_bits=4, weight_group_size=32, act_bits=8, act_mode="dynamic"),
    Scheme("w8a16", weight_bits=8, include_conv=True),
    Scheme("w4a16", weight_bits=4, weight_group_size=32),
)}

# `--bits` per target: TensorRT takes INT4 only as weight-only (w4a16); ONNX Runtime runs
# INT4 weights with int8 dynamic activations through MatMulNBits (w4a8).
_BITS_TO_SCHEME = {
    "tensorrt": {8: "w8a8", 4: "w4a16", 16: "fp16", 32: "fp32"},
    "onnxruntime": {8: "w8a8", 4: "w4a8", 16: "fp16", 32: "fp32"},
    "ort-mobile": {8: "w8a8", 4: "w4a8", 16: "fp16", 32: "fp32"},
}


def get_scheme(name: str | Scheme) -> Scheme:
    if isinstance(name, Scheme):
        return name
    if name not in SCHEMES:
        raise QSchedError(f"unknown scheme {name!r}", f"use one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def scheme_for(target: str, bits: int) -> Scheme:
    """The scheme `--bits` means for a build target."""
    if target not in _BITS_TO_SCHEME:
        raise QSchedError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")
    if bits not in _BITS_TO_SCHEME[target]:
        raise QSchedError(f"bits must be 4, 8, 16 or 32, got {bits}", "pass --bits 4, 8, 16 or 32")
    return SCHEMES[_BITS_TO_SCHEME[target][bits]]
