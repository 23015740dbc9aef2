"""Quantization schemes as data: frozen dataclasses that calibration, the exporter, the targets,
the manifest and `check` all read, importable without torch (runtimes/ is the bottom layer).

A scheme says how Linear layers and how Conv2d layers are quantized (`LayerQuant` each; None =
float), every one not on the skip list (qsched_export.quant.DEFAULT_SKIP_PATTERNS), whether the
attention products Q·Kᵀ and P·V run in int8, and where the Q/DQ nodes go for the runtime it
targets (`placement`).

| scheme | Linear                                           | Conv2d                                       |
|--------|--------------------------------------------------|----------------------------------------------|
| fp32   | float32                                          | float32                                      |
| fp16   | float16 (done by export)                         | float16                                      |
| w8a8   | int8 weights per output channel; int8 static     | int8 weights per output channel; int8 static |
|        | per-tensor inputs; float output (ORT fuses it to | per-tensor inputs and outputs, bias in int32 |
|        | MatMulIntegerToFloat)                            | (ORT: QLinearConv with bias)                 |
| w4a8   | int4 weights, blocks of 32 along K; int8         | int4 weights, blocks of 64 input channels;   |
|        | dynamic activations per row and block of 32      | float activations                            |
|        | (ONNX Runtime MatMulNBits accuracy_level=4)      | (block DequantizeLinear -> Conv)             |
| w4a8s  | int4 weights (blocks of 32), requantized once at | int4 weights (blocks of 64), requantized to  |
|        | session load to int8 per channel; then as w8a8   | int8 per channel at load; then as w8a8       |
| w8a16  | int8 weights per output channel                  | same                                         |
| w4a16  | int4 weights, blocks of 32 along K; float        | int8 weights per output channel; int8        |
|        | activations (TensorRT's INT4 weight-only form)   | static per-tensor inputs                     |

Study-only schemes (calibration and the quality benchmark simulate them; export refuses them, as
no ONNX Runtime or TensorRT kernel runs 3-bit weights or 6-bit activations): w3a8 (w4a8 with int3
weights), w4a6 (w4a8 with 6-bit dynamic activations), w8a6 (w8a8 with 6-bit static activations).

Q/DQ placement (`placement`, set by `scheme_for` per target; measured in docs/RESULTS.md):
- "onnxruntime": ORT fuses `Q/DQ -> Conv -> Q` into QLinearConv (and takes the bias as int32 inside
  it), and `Q/DQ -> MatMul` with a float output into MatMulIntegerToFloat. A Linear's output
  quantizer would only add a QuantizeLinear + DequantizeLinear pair before the float ops that
  follow (attention, GEGLU, residual adds), so Linear outputs stay float.
- "tensorrt": TensorRT's explicit quantization: Q/DQ on the inputs of Conv/MatMul (and on the
  weights) only, float bias; TensorRT fuses the bias, the activation and the next layer's
  QuantizeLinear into the kernel's epilogue itself (ModelOpt's INT8 recipe disables output
  quantizers for the same reason).

Weight range (`weight_range`): "full" = int8 values in [-127, 127]; "7bit" = [-64, 63]. ONNX
Runtime's x86 int8 kernels without VNNI/AMX saturate int16 pair sums with full-range weights
(runtimes/cpu.py); TensorRT, x86 CPUs with VNNI/AMX and ARM CPUs are exact with either, so the
7-bit range only costs accuracy there. `scheme_for` picks it per target and build machine.

Text encoders (`text_weights`): "float" (the default) exports them as the pipeline holds them;
"int8" gives every Linear of every text encoder (SD's CLIP, SDXL's two, FLUX's CLIP and T5)
int8 weights per output channel with float activations, i.e. w8a16 (`text_scheme`): a
DequantizeLinear of the int8 weight feeding MatMul, TensorRT's INT8 weight-only form (ONNX Runtime
fuses it into MatMulNBits, kept at float activations by `runners.ort_session_options`). No int8
kernel multiplies these weights, so they always take the full range, and no activation range is
calibrated for them. T5-XXL's 4.7 B parameters are most of FLUX's text-side memory.

The INT4 schemes differ in their Conv layers because the runtimes do: TensorRT takes INT4 only
on 2-D weights feeding MatMul/Gemm, so its INT4 scheme runs Conv in INT8 (W8A8); ONNX Runtime's
w4a8s stores int4 and computes in int8 (ONNX Runtime folds the int4 -> int8 requantization when
the session loads, then fuses the int8 kernels); w4a8 keeps block-int4 Conv weights that are
dequantized to float on every run (a download-size format: slower than FP32 on CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from runtimes.errors import ArtifactError, UserError

TARGETS = ("tensorrt", "onnxruntime", "ort-mobile")
BITS = (4, 8, 16, 32)  # what `--bits` accepts
ACT_MODES = ("static", "dynamic", "none")
# How a scheme is written in the graph (`Manifest.target_form`).
FORM_FP32, FORM_FP16, FORM_QDQ, FORM_NBITS = "fp32", "fp16", "qdq", "matmulnbits"
TARGET_FORMS = (FORM_FP32, FORM_FP16, FORM_QDQ, FORM_NBITS)
WEIGHT_RANGES = ("full", "7bit")
TEXT_WEIGHTS = ("float", "int8")
PLACEMENTS = ("onnxruntime", "tensorrt")
# Int8 attention's probabilities P lie in [0, 1]: a fixed scale, nothing to calibrate.
ATTENTION_PROBS_SCALE = 1.0 / 127.0
# Every key of a scheme record (`Scheme.to_dict`; bits, weight_bits and weight_range are derived).
SCHEME_RECORD_KEYS = ("name", "bits", "weight_bits", "float_dtype", "placement", "weight_range", "int8_attention", "text_weights",
                      "linear", "conv")
# What a reader says about a record written by another qsched-export version (as for a manifest's schema_version).
_REEXPORT = "re-export the artifact with this qsched-export version, or install the version that wrote it"


def _check_record_keys(data: dict, expected, where: str) -> None:
    """Refuse a record that lacks any of the `expected` keys or holds others: a default would
    silently stand in for what the writer meant. One `ArtifactError` names them all."""
    missing = [key for key in expected if key not in data]
    unknown = sorted(str(key) for key in set(data) - set(expected))
    parts = ([f"lacks field(s) {', '.join(missing)}"] if missing else []) + ([f"has unknown field(s) {', '.join(unknown)}"] if unknown else [])
    if parts:
        raise ArtifactError(f"{where}: the record {' and '.join(parts)}", _REEXPORT)


class SchemeError(UserError):
    """A scheme that cannot exist (bad bits, modes or combinations) or cannot run here."""


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
        quantize_outputs (`bool`): also quantize the layer's output with a calibrated per-tensor
            scale (ONNX Runtime's QLinearConv form).
        reduce_range (`bool`): int8 weights (or the int8 requantization of int4 weights) use 7
            bits ([-64, 63], scale amax / 63), for ONNX Runtime's x86 kernels without VNNI.
        bias_int32 (`bool`): the bias is quantized to int32 with the scale input_scale *
            weight_scale and added to the accumulator before the output quantizer, as QLinearConv
            takes it: `y = Q(conv(x, W) + round(b / (sx * sw)) * sx * sw)`. Needs quantize_outputs.
        requant_bits (`int | None`): 8 = int4 (block) weights are stored, and requantized once,
            when the session loads, to int8 per output channel (scale = amax of the dequantized
            int4 weight / qmax), so int8 kernels run them: the file has int4's size, the runtime
            int8's speed. None = the weights run as stored.
    """

    weight_bits: int
    group_size: int | None = None
    act_bits: int | None = None
    act_mode: str = "none"
    quantize_outputs: bool = False
    reduce_range: bool = False
    bias_int32: bool = False
    requant_bits: int | None = None

    def check(self, where: str) -> None:
        if self.weight_bits not in (3, 4, 8):
            raise SchemeError(f"{where}: weight_bits must be 3, 4 or 8, got {self.weight_bits}", "use 4 or 8")
        if self.weight_bits in (3, 4) and self.group_size is None:
            raise SchemeError(f"{where}: int{self.weight_bits} weights need a group_size", "use group_size=32")
        if self.group_size is not None and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise SchemeError(f"{where}: group_size must be a power of two >= 16, got {self.group_size}", "use 32")
        if self.act_mode not in ACT_MODES:
            raise SchemeError(f"{where}: act_mode must be one of {', '.join(ACT_MODES)}, got {self.act_mode!r}", "pick one of them")
        if (self.act_bits is None) != (self.act_mode == "none"):
            raise SchemeError(f"{where}: act_bits={self.act_bits} does not fit act_mode={self.act_mode!r}", "use act_bits=8 with static/dynamic, None with none")
        if self.act_bits not in (None, 6, 8):
            raise SchemeError(f"{where}: act_bits must be 8, 6 or None, got {self.act_bits}", "use 8")
        if self.act_mode == "dynamic" and self.group_size is None:
            raise SchemeError(f"{where}: dynamic activations are quantized per block of group_size", "set group_size")
        if self.quantize_outputs and self.act_mode != "static":
            raise SchemeError(f"{where}: output quantizers need static activation scales", "use act_mode='static'")
        if self.bias_int32 and not self.quantize_outputs:
            raise SchemeError(f"{where}: an int32 bias is added inside the quantized output (QLinearConv)", "set quantize_outputs=True")
        if self.requant_bits not in (None, 8):
            raise SchemeError(f"{where}: requant_bits must be 8 or None, got {self.requant_bits}", "use 8")
        if self.requant_bits is not None and (self.weight_bits not in (3, 4) or self.act_mode != "static"):
            raise SchemeError(f"{where}: requantizing to int8 at load is for int4 weights with static int8 activations", "use weight_bits=4, act_mode='static'")
        if self.reduce_range and self.int8_weight_bits is None:
            raise SchemeError(f"{where}: reduce_range applies to int8 weights (or their int8 requantization) only", "set reduce_range=False")

    @property
    def int8_weight_bits(self) -> int | None:
        """The value range (7 or 8) of the int8 weights the kernel multiplies, None if none are int8."""
        if self.weight_bits == 8 or self.requant_bits == 8:
            return 7 if self.reduce_range else 8
        return None

    @property
    def weight_qbits(self) -> int:
        """The bits of the stored weight's value range (7 with reduce_range): numerics.QMAX's key."""
        return 7 if self.reduce_range and self.weight_bits == 8 else self.weight_bits

    @property
    def static_activations(self) -> bool:
        return self.act_mode == "static"

    @property
    def exportable(self) -> bool:
        return self.weight_bits in (4, 8) and self.act_bits in (None, 8)

    @classmethod
    def from_dict(cls, data: dict, where: str = "scheme") -> "LayerQuant":
        """The layer a scheme record holds (`asdict`): every field, no other."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: the layer record is a {type(data).__name__}, not an object of fields", _REEXPORT)
        _check_record_keys(data, [f.name for f in fields(cls)], where)
        spec = cls(**data)
        spec.check(where)
        return spec


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: its name (the key in qsched.json), how Linear and Conv2d layers are
    quantized (None = float), the float type of everything else ("float32" or "float16"),
    whether attention's Q·Kᵀ and P·V run in int8 (`int8_attention`: static per-tensor scales of
    q, k and v, P's fixed 1/127; diffusers `Attention` modules with the default processor), the
    runtime its Q/DQ placement is made for and the text encoders' weights (`text_weights`: "float"
    or "int8", weight-only; see the module docstring)."""

    name: str
    linear: LayerQuant | None = None
    conv: LayerQuant | None = None
    float_dtype: str = "float32"
    int8_attention: bool = False
    placement: str = "onnxruntime"
    text_weights: str = "float"

    def __post_init__(self):
        for kind, spec in (("Linear", self.linear), ("Conv2d", self.conv)):
            if spec is not None:
                spec.check(f"scheme {self.name} ({kind})")
        if self.conv is not None and self.conv.act_mode == "dynamic":
            raise SchemeError(f"scheme {self.name}: dynamic activations exist for Linear layers only (MatMulNBits)", "use static or none for Conv2d")
        if self.float_dtype not in ("float32", "float16"):
            raise SchemeError(f"scheme {self.name}: float_dtype must be float32 or float16", "pick one of them")
        if self.placement not in PLACEMENTS:
            raise SchemeError(f"scheme {self.name}: placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}", "pick one of them")
        if self.int8_attention and not (self.static_activations and all(s.act_bits in (None, 8) for s in self.layers)):
            raise SchemeError(f"scheme {self.name}: int8 attention needs a scheme with static int8 activations", "use it with w8a8 or w4a8s")
        if self.text_weights not in TEXT_WEIGHTS:
            raise SchemeError(f"text weights must be one of {', '.join(TEXT_WEIGHTS)}, got {self.text_weights!r}",
                              "pass --text-weights int8 (weight-only INT8 text encoders) or float")

    @property
    def quantized(self) -> bool:
        """Whether the scheme changes any layer (fp32/fp16 do not: they need no calibration of ranges)."""
        return self.linear is not None or self.conv is not None

    @property
    def layers(self) -> tuple[LayerQuant, ...]:
        return tuple(spec for spec in (self.linear, self.conv) if spec is not None)

    @property
    def weight_bits(self) -> int | None:
        """The Linear weights' bits (None for float schemes)."""
        return None if self.linear is None else self.linear.weight_bits

    @property
    def bits(self) -> int:
        """What `--bits` calls the scheme: the weight bits, else 16 or 32 from float_dtype."""
        if self.weight_bits is not None:
            return self.weight_bits
        return 16 if self.float_dtype == "float16" else 32

    @property
    def static_activations(self) -> bool:
        """Whether any layer needs calibrated activation ranges."""
        return any(spec.static_activations for spec in self.layers)

    @property
    def block_weights(self) -> bool:
        """Whether any weight is dequantized in blocks in the graph (opset 21's blocked
        DequantizeLinear and INT4 type); w4a8s' int4 blocks are unpacked by plain ops instead."""
        return any(spec.group_size is not None and spec.requant_bits is None for spec in self.layers)

    @property
    def exportable(self) -> bool:
        """Whether ONNX Runtime / TensorRT have kernels for it (the study schemes w3a8, w4a6, w8a6 do not)."""
        return all(spec.exportable for spec in self.layers)

    @property
    def int8_activations(self) -> bool:
        """Whether a runtime multiplies int8 activations by int8 weights (fused int8 kernels)."""
        return any(spec.static_activations and spec.int8_weight_bits is not None for spec in self.layers)

    @property
    def weight_range(self) -> str | None:
        """"full" or "7bit" for the int8 weights the kernels multiply; None without int8 weights."""
        ranges = {spec.int8_weight_bits for spec in self.layers} - {None}
        if not ranges:
            return None
        return "7bit" if ranges == {7} else "full" if ranges == {8} else "mixed"

    @property
    def text_scheme(self) -> Scheme:
        """The scheme the text encoders are exported with: fp32, or w8a16 for int8 text weights."""
        return SCHEMES["w8a16" if self.text_weights == "int8" else "fp32"]

    @property
    def target_form(self) -> str:
        """How the scheme is written in the graph (`Manifest.target_form`)."""
        if not self.quantized:
            return FORM_FP16 if self.float_dtype == "float16" else FORM_FP32
        return FORM_NBITS if self.linear is not None and self.linear.act_mode == "dynamic" else FORM_QDQ

    def with_weight_range(self, weight_range: str) -> "Scheme":
        """This scheme with its int8 weights in `weight_range` ("full" or "7bit")."""
        if weight_range not in WEIGHT_RANGES:
            raise SchemeError(f"weight range must be one of {', '.join(WEIGHT_RANGES)}, got {weight_range!r}", "pass --weight-range full or 7bit")
        reduce = weight_range == "7bit"
        return replace(self, **{kind: replace(spec, reduce_range=reduce) for kind, spec in (("linear", self.linear), ("conv", self.conv))
                                if spec is not None and spec.int8_weight_bits is not None})

    def with_placement(self, placement: str) -> "Scheme":
        """This scheme with its Q/DQ placed for `placement` (see the module docstring)."""
        if placement not in PLACEMENTS:
            raise SchemeError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}", "pick one of them")

        def place(spec: LayerQuant | None, kind: str) -> LayerQuant | None:
            if spec is None or not spec.static_activations:
                return spec
            outputs = placement == "onnxruntime" and kind == "conv"
            return replace(spec, quantize_outputs=outputs, bias_int32=outputs)

        return replace(self, placement=placement, linear=place(self.linear, "linear"), conv=place(self.conv, "conv"))

    def to_dict(self) -> dict:
        return {"name": self.name, "bits": self.bits, "weight_bits": self.weight_bits, "float_dtype": self.float_dtype,
                "placement": self.placement, "weight_range": self.weight_range, "int8_attention": self.int8_attention,
                "text_weights": self.text_weights, "linear": None if self.linear is None else asdict(self.linear),
                "conv": None if self.conv is None else asdict(self.conv)}

    @classmethod
    def from_dict(cls, data: dict) -> "Scheme":
        """The scheme a manifest records (`to_dict`). A record with a key missing or unknown (one
        another qsched-export version wrote) is refused with an `ArtifactError`, never completed
        with defaults its graphs may not have been written with."""
        if not isinstance(data, dict) or "name" not in data:
            raise ArtifactError("the manifest's scheme is not a scheme record", _REEXPORT)
        name = str(data["name"])
        _check_record_keys(data, SCHEME_RECORD_KEYS, f"the manifest's scheme {name}")
        where = f"the manifest's scheme {name}"
        if not isinstance(data["int8_attention"], bool):  # bool("false") would be True
            raise ArtifactError(f"{where}: int8_attention is {data['int8_attention']!r}, not true or false", _REEXPORT)
        layers = {kind: None if data[kind] is None else LayerQuant.from_dict(data[kind], f"{where} ({kind})") for kind in ("linear", "conv")}
        scheme = cls(name, layers["linear"], layers["conv"], str(data["float_dtype"]), data["int8_attention"], str(data["placement"]),
                     str(data["text_weights"]))
        # The record repeats what its layers imply, for readers without this class: they must agree.
        for key in ("bits", "weight_bits", "weight_range"):
            if data[key] != getattr(scheme, key):
                raise ArtifactError(f"{where}: its {key} {data[key]!r} is not what its layers give ({getattr(scheme, key)!r})", _REEXPORT)
        return scheme

    @property
    def folder_tag(self) -> str:
        """The name plus the graph-changing options a user opts into (int8 attention, int8 text
        weights), for default output folders (`qsched_export.outputs`), so that e.g. a build with
        int8 text weights does not take the float build's folder: "w8a8", "w8a8-int8attn",
        "w4a16-int8text". The weight range is left out: by default it follows the build machine's
        CPU, and a folder named after it would move with the machine."""
        return self.name + ("-int8attn" if self.int8_attention else "") + (f"-{self.text_weights}text" if self.text_weights != "float" else "")

    def describe(self) -> str:
        """One line for the CLI, e.g. "Linear int8 weights, static int8 activations; Conv ...; int8 attention"."""
        def layer(kind: str, spec: LayerQuant | None) -> str:
            if spec is None:
                return f"{kind} {self.float_dtype}"
            weights = f"int{spec.weight_bits} weights" + (" run as int8" if spec.requant_bits else "")
            acts = "float" if spec.act_bits is None else f"{spec.act_mode} int{spec.act_bits}"
            return f"{kind} {weights}, {acts} activations"
        parts = [layer("Linear", self.linear), layer("Conv", self.conv)]
        if self.int8_attention:
            parts.append("int8 attention")
        if self.text_weights != "float":
            parts.append(f"text encoders {self.text_weights} weights")
        return "; ".join(parts)


_W8A8 = LayerQuant(8, act_bits=8, act_mode="static")
_W4_DYNAMIC_A8 = LayerQuant(4, group_size=32, act_bits=8, act_mode="dynamic")
_W4_WEIGHT_ONLY = LayerQuant(4, group_size=32)
# Conv blocks of 64 input channels: float32 scales cost 4 bytes per block, 25% of the packed int4
# at 32 (which left SD1.5's w4a8 at 0.159x of FP32); 64 gives 0.148x. Conv is ~70% of its weights.
_W4_CONV = LayerQuant(4, group_size=64)
_W4_STATIC_A8 = LayerQuant(4, group_size=32, act_bits=8, act_mode="static", requant_bits=8)
SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("fp32"),
    Scheme("fp16", float_dtype="float16"),
    Scheme("w8a8", linear=_W8A8, conv=_W8A8).with_placement("onnxruntime"),
    Scheme("w4a8", linear=_W4_DYNAMIC_A8, conv=_W4_CONV),
    Scheme("w4a8s", linear=_W4_STATIC_A8, conv=replace(_W4_STATIC_A8, group_size=64)).with_placement("onnxruntime"),
    Scheme("w8a16", linear=LayerQuant(8), conv=LayerQuant(8)),
    Scheme("w4a16", linear=_W4_WEIGHT_ONLY, conv=LayerQuant(8, act_bits=8, act_mode="static"), placement="tensorrt"),
    Scheme("w3a8", linear=replace(_W4_DYNAMIC_A8, weight_bits=3), conv=replace(_W4_CONV, weight_bits=3)),
    Scheme("w4a6", linear=replace(_W4_DYNAMIC_A8, act_bits=6), conv=_W4_CONV),
    Scheme("w8a6", linear=replace(_W8A8, act_bits=6), conv=replace(_W8A8, act_bits=6)).with_placement("onnxruntime"),
)}

# `--bits` per target: TensorRT takes INT4 only as weight-only (w4a16); ONNX Runtime runs INT4
# weights with int8 dynamic activations through MatMulNBits (w4a8).
_BITS_TO_SCHEME = {
    "tensorrt": {8: "w8a8", 4: "w4a16", 16: "fp16", 32: "fp32"},
    "onnxruntime": {8: "w8a8", 4: "w4a8", 16: "fp16", 32: "fp32"},
    "ort-mobile": {8: "w8a8", 4: "w4a8", 16: "fp16", 32: "fp32"},
}
_PLACEMENT = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "ort-mobile": "onnxruntime"}


def get_scheme(name: "str | Scheme") -> Scheme:
    if isinstance(name, Scheme):
        return name
    if name not in SCHEMES:
        raise SchemeError(f"unknown scheme {name!r}", f"use one of {', '.join(SCHEMES)}")
    return SCHEMES[name]


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise SchemeError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")


def default_weight_range(target: str, cpu=None) -> str:
    """The int8 weight range a build for `target` uses unless told: "full" for TensorRT and
    ort-mobile (phones: ARM, whose int8 kernels are exact), and for onnxruntime "full" when this
    machine's CPU has exact int8 dot products (VNNI, AMX, ARM dot product), else "7bit" (also
    when the CPU's features cannot be read: 7-bit weights are exact on every kernel)."""
    check_target(target)
    if target != "onnxruntime":
        return "full"
    if cpu is None:
        from runtimes import cpu as cpu_probe

        cpu = cpu_probe.probe()
    return "full" if cpu.exact_int8_dot else "7bit"


def scheme_for(target: str, bits: int, *, weight_range: str | None = None, int8_attention: bool = False, scheme: str | None = None, cpu=None,
               text_weights: str | None = None) -> Scheme:
    """The scheme `--bits` (or `scheme`, by name) means for a build target, with the target's Q/DQ
    placement, `weight_range` ("full", "7bit"; None = `default_weight_range`), int8 attention and
    the text encoders' weights (`text_weights`: "float" or "int8"; None = float)."""
    check_target(target)
    if scheme is None:
        if bits not in BITS:
            raise SchemeError(f"bits must be 4, 8, 16 or 32, got {bits}", "pass --bits 4, 8, 16 or 32")
        scheme = _BITS_TO_SCHEME[target][bits]
    chosen = replace(get_scheme(scheme), text_weights="float" if text_weights is None else text_weights)  # validates it; the text encoders take it whatever the bits
    if not chosen.quantized:
        if int8_attention:
            raise SchemeError(f"int8 attention needs a quantized scheme, not {chosen.name}", "pass --bits 8 with --int8-attention")
        return chosen
    if chosen.static_activations:
        chosen = chosen.with_placement(_PLACEMENT[target])
    if chosen.weight_range is not None:
        chosen = chosen.with_weight_range(weight_range or default_weight_range(target, cpu))
    elif weight_range is not None:
        raise SchemeError(f"scheme {chosen.name} has no int8 weights, so --weight-range does not apply", "drop --weight-range")
    if int8_attention:
        chosen = replace(chosen, int8_attention=True)
    return chosen


def require_cpu_support(scheme: Scheme, cpu=None) -> None:
    """Refuse to run `scheme` in ONNX Runtime's CPU int8 kernels on a CPU that computes it wrongly:
    full-range int8 weights on x86 without VNNI/AMX saturate (runtimes/cpu.py). Unknown CPU
    features are not refused (nothing to go by; the parity check still runs)."""
    if not scheme.int8_activations or scheme.weight_range != "full":
        return
    if cpu is None:
        from runtimes import cpu as cpu_probe

        cpu = cpu_probe.probe()
    if cpu.exact_int8_dot is False:
        raise SchemeError(f"this CPU ({cpu.int8_kernel}) saturates full-range int8 weights in ONNX Runtime's int8 kernels, and scheme "
                          f"{scheme.name} was built with --weight-range full",
                          "rebuild the artifact with --weight-range 7bit (the default when building on this CPU)")
