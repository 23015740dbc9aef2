"""Quantization schemes: one frozen dataclass that calibration, export and the TensorRT contract
checker all read, so no module re-derives bit-widths from flags. A scheme says how Linear layers
and how Conv2d layers are quantized (`LayerQuant` each; None = float), every one not on the
skip list (modules.DEFAULT_SKIP_PATTERNS).

| scheme | Linear                                          | Conv2d                                      |
|--------|-------------------------------------------------|---------------------------------------------|
| fp32   | float32                                         | float32                                     |
| fp16   | float16 (done by export)                        | float16                                     |
| w8a8   | int8 weights (7-bit range) per output channel;  | same                                        |
|        | int8 static per-tensor inputs AND outputs       |                                             |
| w4a8   | int4 weights, blocks of 32 along K; int8        | int4 weights, blocks of 64 input channels;  |
|        | dynamic activations per row and block of 32     | float activations                           |
|        | (ONNX Runtime MatMulNBits accuracy_level=4)     | (block DequantizeLinear -> Conv)            |
| w8a16  | int8 weights per output channel                 | same                                        |
| w4a16  | int4 weights, blocks of 32 along K; float       | int8 weights per output channel; int8       |
|        | activations (TensorRT's INT4 weight-only form)  | static per-tensor inputs                    |

The INT4 schemes differ in their Conv layers because the runtimes do: TensorRT takes INT4 only
on 2-D weights feeding MatMul/Gemm, so its INT4 scheme runs Conv in INT8 (W8A8), while ONNX
Runtime dequantizes a block-INT4 Conv weight to float, which shrinks the file 2x below INT8.

Study-only schemes (calibration and the quality benchmark simulate them; `export` refuses them,
as no ONNX Runtime or TensorRT kernel runs 3-bit weights or 6-bit activations). They show where
quantization loss starts on a model that W8A8 and W4A8 do not hurt:

| w3a8   | as w4a8 with int3 weights                       | as w4a8 with int3 weights                   |
| w4a6   | as w4a8 with 6-bit dynamic activations          | as w4a8                                     |
| w8a6   | as w8a8 with 6-bit static activations           | as w8a8 with 6-bit static activations       |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from qsched_export.errors import QSchedError

ACT_MODES = ("static", "dynamic", "none")
TARGETS = ("tensorrt", "onnxruntime", "ort-mobile")


@dataclass(frozen=True)
class LayerQuant:
    """How one kind of layer is quantized.

    Args:
        weight_bits (`int`): 8, 4 or 3 (symmetric, zero point 0; 3 is study-only).
        group_size (`int | None`): None = one scale per output channel; an int = one scale per
            output channel and block of that many consecutive input features (Linear) or input
            channels (Conv2d, per kernel position); int4 and int3 only.
        act_bits (`int | None`): 8 for int8 activations (6 is study-only), None for float activations.
        act_mode (`str`): "static" (one calibrated per-tensor scale, zero point 0), "dynamic"
            (computed at run time per row and block of `group_size` input features, as ONNX
            Runtime's MatMulNBits accuracy_level=4 kernel does; Linear only) or "none".
        quantize_outputs (`bool`): also fake-quantize the layer's product (before the bias is
            added) with a calibrated per-tensor scale, so the exporter's full Q/DQ pattern fuses to
            QLinearMatMul/QLinearConv in ONNX Runtime.
        reduce_range (`bool`): int8 weights use 7 bits ([-64, 63], scale amax / 63). ONNX Runtime's
            fused int8 kernels on x86 without VNNI (AVX2: VPMADDUBSW) add pairs of u8 x s8 products
            in int16, which saturates with full-range weights: measured on this AVX2 machine, a
            48->32 Linear fused to QLinearMatMul was off by up to 31 output steps on 24% of the
            outputs with full-range weights and bit-exact with 7-bit weights. TensorRT takes any
            symmetric int8 values, so one reduced-range calibration serves both targets.
    """

    weight_bits: int
    group_size: int | None = None
    act_bits: int | None = None
    act_mode: str = "none"
    quantize_outputs: bool = False
    reduce_range: bool = False

    def check(self, where: str) -> None:
        if self.weight_bits not in (3, 4, 8):
            raise QSchedError(f"{where}: weight_bits must be 3, 4 or 8, got {self.weight_bits}", "use 4 or 8")
        if self.weight_bits in (3, 4) and self.group_size is None:
            raise QSchedError(f"{where}: int{self.weight_bits} weights need a group_size", "use group_size=32")
        if self.group_size is not None and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise QSchedError(f"{where}: group_size must be a power of two >= 16, got {self.group_size}", "use 32")
        if self.act_mode not in ACT_MODES:
            raise QSchedError(f"{where}: act_mode must be one of {', '.join(ACT_MODES)}, got {self.act_mode!r}", "pick one of them")
        if (self.act_bits is None) != (self.act_mode == "none"):
            raise QSchedError(f"{where}: act_bits={self.act_bits} does not fit act_mode={self.act_mode!r}", "use act_bits=8 with static/dynamic, None with none")
        if self.act_bits not in (None, 6, 8):
            raise QSchedError(f"{where}: act_bits must be 8, 6 or None, got {self.act_bits}", "use 8")
        if self.act_mode == "dynamic" and self.group_size is None:
            raise QSchedError(f"{where}: dynamic activations are quantized per block of group_size", "set group_size")
        if self.quantize_outputs and self.act_mode != "static":
            raise QSchedError(f"{where}: output quantizers need static activation scales", "use act_mode='static'")
        if self.reduce_range and self.weight_bits != 8:
            raise QSchedError(f"{where}: reduce_range applies to int8 weights only", "set reduce_range=False")

    @property
    def weight_qbits(self) -> int:
        """The bits of the weight value range (7 with reduce_range): the key of numerics.QMAX."""
        return 7 if self.reduce_range else self.weight_bits

    @property
    def static_activations(self) -> bool:
        return self.act_mode == "static"

    @property
    def exportable(self) -> bool:
        return self.weight_bits in (4, 8) and self.act_bits in (None, 8)


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: its name (the key in qsched.json), how Linear and Conv2d layers are
    quantized (None = float) and the float type of everything else ("float32" or "float16")."""

    name: str
    linear: LayerQuant | None = None
    conv: LayerQuant | None = None
    float_dtype: str = "float32"

    def __post_init__(self):
        for kind, spec in (("Linear", self.linear), ("Conv2d", self.conv)):
            if spec is not None:
                spec.check(f"scheme {self.name} ({kind})")
        if self.conv is not None and self.conv.act_mode == "dynamic":
            raise QSchedError(f"scheme {self.name}: dynamic activations exist for Linear layers only (MatMulNBits)", "use static or none for Conv2d")
        if self.float_dtype not in ("float32", "float16"):
            raise QSchedError(f"scheme {self.name}: float_dtype must be float32 or float16", "pick one of them")

    @property
    def quantized(self) -> bool:
        """Whether the scheme changes any layer (fp32/fp16 do not: they need no calibration of ranges)."""
        return self.linear is not None or self.conv is not None

    @property
    def layers(self) -> tuple[LayerQuant, ...]:
        return tuple(spec for spec in (self.linear, self.conv) if spec is not None)

    @property
    def weight_bits(self) -> int | None:
        """What `--bits` calls the scheme: the Linear weights' bits (None for float schemes)."""
        return None if self.linear is None else self.linear.weight_bits

    @property
    def static_activations(self) -> bool:
        """Whether any layer needs calibrated activation ranges."""
        return any(spec.static_activations for spec in self.layers)

    @property
    def block_weights(self) -> bool:
        """Whether any weight is stored in blocks (needs opset 21's blocked DequantizeLinear)."""
        return any(spec.group_size is not None for spec in self.layers)

    @property
    def exportable(self) -> bool:
        """Whether ONNX Runtime / TensorRT have kernels for it (the study schemes w3a8, w4a6, w8a6 do not)."""
        return all(spec.exportable for spec in self.layers)

    def to_dict(self) -> dict:
        return {"name": self.name, "weight_bits": self.weight_bits, "float_dtype": self.float_dtype,
                "linear": None if self.linear is None else asdict(self.linear), "conv": None if self.conv is None else asdict(self.conv)}


_W8A8 = LayerQuant(8, act_bits=8, act_mode="static", quantize_outputs=True, reduce_range=True)
_W4_DYNAMIC_A8 = LayerQuant(4, group_size=32, act_bits=8, act_mode="dynamic")
_W4_WEIGHT_ONLY = LayerQuant(4, group_size=32)
# Conv blocks of 64 input channels: float32 scales cost 4 bytes per block, 25% of the packed int4
# at 32 (which left SD1.5's w4a8 at 0.159x of FP32); 64 gives 0.148x. Conv is ~70% of its weights.
_W4_CONV = LayerQuant(4, group_size=64)
SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("fp32"),
    Scheme("fp16", float_dtype="float16"),
    Scheme("w8a8", linear=_W8A8, conv=_W8A8),
    Scheme("w4a8", linear=_W4_DYNAMIC_A8, conv=_W4_CONV),
    Scheme("w8a16", linear=LayerQuant(8), conv=LayerQuant(8)),
    Scheme("w4a16", linear=_W4_WEIGHT_ONLY, conv=LayerQuant(8, act_bits=8, act_mode="static")),
    Scheme("w3a8", linear=replace(_W4_DYNAMIC_A8, weight_bits=3), conv=replace(_W4_CONV, weight_bits=3)),
    Scheme("w4a6", linear=replace(_W4_DYNAMIC_A8, act_bits=6), conv=_W4_CONV),
    Scheme("w8a6", linear=replace(_W8A8, act_bits=6), conv=replace(_W8A8, act_bits=6)),
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
