"""TensorRT's explicit-quantization contract, checked on an ONNX graph with `onnx` alone, so CI
(where TensorRT is absent) rejects a graph that TensorRT would reject or misread, before any
build. Rules and sources are in ../shared/TENSORRT_NOTES.md; each rule id below names one.

Q/DQ rules (TensorRT 10.x, both profiles):
  zero-point       zero points are constant, all 0, the quantized tensor's dtype, the scale's shape
  uint8            UINT8 quantization is not supported (a QuantizeLinear without zero point or
                   `output_dtype` quantizes to UINT8 by ONNX's default, so it is flagged too)
  quant-dtype      quantized types are INT8, INT4 and FP8 only
  scale            scales are constants, FP32/FP16/BF16, all > 0
  per-channel      a 1-D scale (per-channel) only on a constant-rooted weight, with `axis` given,
                   valid for the consumer (Conv axis 0, ConvTranspose axis 1, MatMul B [K,N] the
                   last axis, Gemm B axis 0 with transB=1 else 1) and `len(scale) == dim[axis]`
  int4             INT4 only as a blockwise DequantizeLinear of a 2-D constant weight feeding
                   MatMul/Gemm, last dim even, exactly one blocked axis, `block_size` agreeing
                   with the shapes, opset >= 21 (the `block_size` attribute); never on activations
  block            block (same-rank) scales only for INT4 (10.3 allows nothing else)
  placement        TensorRT's documented Q/DQ placement: an activation's DequantizeLinear feeds
                   the data input of a Conv/ConvTranspose/MatMul/Gemm (both inputs of an
                   activation x activation MatMul: attention) or an Add (the residual input
                   TensorRT fuses into the conv's epilogue), through Reshape/Transpose/Flatten/
                   Squeeze/Unsqueeze at most. A DequantizeLinear in front of any other op (a
                   quantized output before GroupNorm, Softmax, ...) is a separate reformat
                   kernel in TensorRT, not a fused int8 op: ONNX Runtime's placement, the wrong
                   graph for TensorRT.
  int4-consumer    an INT4 initializer feeds DequantizeLinear only (TensorRT reads INT4 only there)
Graph rules:
  static-shape     every graph input/output has fixed, positive dims
  ort-only-op      no `com.microsoft` ops (MatMulNBits, QLinear*, ... run on ONNX Runtime only)
  custom-domain    no other non-ONNX domains
  unsupported-op   every op is in the profile's supported set
  op-attribute     per-op restrictions TensorRT documents (Resize modes, ScatterND reduction,
                   LayerNormalization's extra outputs)
  opset            the default-domain opset is within the profile's range

Per-version opset rule (decided here; see the notes' table): TensorRT 10.1 documents opsets
9-20 and 10.3's own range is unconfirmed. We accept opset 21 for 10.3 because 10.3 documents
INT4 block DequantizeLinear (NvInfer.h@10.3), which ONNX defines only from opset 21
(`block_size`, ONNX 1.16, the ONNX that 10.3's parser is built against). Current desktop
TensorRT (10.15) documents 9-24.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qsched_export.errors import QSchedError

# Ops marked supported in onnx-tensorrt docs/operators.md for TensorRT 8.5 (the last table we
# could read in full), plus those the notes record as added since: GroupNormalization and
# LayerNormalization (8.6), Gelu/IsInf (opset-20 era, 10.0). 10.15 adds RMSNormalization and
# Attention. DynamicQuantizeLinear, QLinearConv, QLinearMatMul and MatMulInteger are unsupported.
_OPS_10_3 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HardSigmoid HardSwish Identity If ImageScaler InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


@dataclass(frozen=True)
class TensorRTProfile:
    """One TensorRT release the graph must build on."""

    name: str
    opset_min: int
    opset_max: int
    ops: frozenset[str]


PROFILES: dict[str, TensorRTProfile] = {
    "10.3": TensorRTProfile("TensorRT 10.3 (JetPack 6.1/6.2)", 9, 21, _OPS_10_3),
    "10.15": TensorRTProfile("TensorRT 10.15 (desktop)", 9, 24, _OPS_10_3 | {"RMSNormalization", "Attention"}),
}
DEFAULT_PROFILES = ("10.3", "10.15")

_T = onnx.TensorProto
_INT8, _UINT8, _INT4, _UINT4, _FP8 = _T.INT8, _T.UINT8, _T.INT4, _T.UINT4, (_T.FLOAT8E4M3FN,)
_SCALE_DTYPES = (_T.FLOAT, _T.FLOAT16, _T.BFLOAT16)
# Ops that pass a constant through unchanged in value layout terms: a weight behind them is
# still "rooted at a constant" for TensorRT's constant folding.
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}
# Where an activation DequantizeLinear may lead (the placement rule), and the shape-only ops on the way.
_QUANTIZABLE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add"}
_SHAPE_ONLY = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class Violation:
    node: str
    op_type: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}) [{self.rule}]: {self.message}"


class ContractError(QSchedError):
    """A graph TensorRT would reject; `violations` lists every one. The message lists the first
    `SHOWN` one per line, then how many more (a graph with a wrong placement breaks the same
    rule at hundreds of nodes, and one long line helps nobody)."""

    SHOWN = 5

    def __init__(self, graph: str, violations: list[Violation]):
        self.violations = violations
        rules = sorted({v.rule for v in violations})
        lines = [f"  {v}" for v in violations[: self.SHOWN]]
        if len(violations) > self.SHOWN:
            lines.append(f"  ... and {len(violations) - self.SHOWN} more")
        super().__init__(f"{graph} breaks TensorRT's contract in {len(violations)} place(s) (rules: {', '.join(rules)}):\n" + "\n".join(lines),
                         "re-export for --target tensorrt (qsched-export export/build picks the TensorRT form), or fix the graph")


class _Graph:
    """Indexes of one ONNX graph: constants, producers, consumers and dtypes by tensor name."""

    def __init__(self, model):
        self.graph = model.graph
        self.init = {t.name: t for t in model.graph.initializer}
        self.const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))

    def constant(self, name: str):
        """The TensorProto of a constant tensor (initializer, Constant node, or either behind
        Identity nodes, as torch.onnx writes shared parameters), else None."""
        if name in self.init:
            return self.init[name]
        node = self.const_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return a.t
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":
            return self.constant(node.input[0])
        return None

    def value(self, name: str) -> np.ndarray | None:
        t = self.constant(name)
        return None if t is None else onnx.numpy_helper.to_array(t)

    def rooted_at_constant(self, name: str) -> bool:
        if self.constant(name) is not None:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type in _PASS_THROUGH and bool(node.input) and self.rooted_at_constant(node.input[0])

    def dtype(self, name: str) -> int | None:
        t = self.constant(name)
        return t.data_type if t is not None else None


def _label(node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _dtype_name(dtype: int | None) -> str:
    return "unknown" if dtype is None else onnx.TensorProto.DataType.Name(dtype)


def _quantized_dtype(g: _Graph, node) -> int | None:
    """The integer type a Q node produces or a DQ node consumes."""
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zp is not None and g.dtype(zp) is not None:
        return g.dtype(zp)
    if node.op_type == "QuantizeLinear":
        # ONNX: without a zero point the output is `output_dtype`, defaulting to UINT8.
        return _attr(node, "output_dtype", 0) or _UINT8
    x_type = g.dtype(node.input[0])
    if x_type is not None:
        return x_type
    producer = g.producer.get(node.input[0])
    return _quantized_dtype(g, producer) if producer is not None and producer.op_type == "QuantizeLinear" else None


def _check_qdq(g: _Graph, node, label: str, opset: int) -> list[Violation]:
    out: list[Violation] = []

    def bad(rule: str, message: str) -> None:
        out.append(Violation(label, node.op_type, rule, message))

    x, scale_name = node.input[0], node.input[1]
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    qtype = _quantized_dtype(g, node)

    # scale: constant, float type, positive
    scale = g.value(scale_name)
    if scale is None:
        bad("scale", f"scale {scale_name} is not a constant (TensorRT needs build-time scales)")
    else:
        if g.dtype(scale_name) not in _SCALE_DTYPES:
            bad("scale", f"scale {scale_name} is {_dtype_name(g.dtype(scale_name))}; TensorRT takes FP32, FP16 or BF16")
        if not np.all(scale.astype(np.float64) > 0):
            bad("scale", f"scale {scale_name} has values <= 0 (min {float(np.min(scale)):g})")

    # quantized type and zero point
    if qtype == _UINT8:
        bad("uint8", "UINT8 quantization is not supported by TensorRT" + ("" if zp else " (a QuantizeLinear without zero point or output_dtype defaults to UINT8)"))
    elif qtype == _UINT4:
        bad("uint8", "UINT4 quantization is not supported by TensorRT; use INT4")
    elif qtype is not None and qtype not in (_INT8, _INT4, *_FP8):
        bad("quant-dtype", f"quantized type {_dtype_name(qtype)} is not INT8, INT4 or FP8")
    if zp is not None:
        zp_value = g.value(zp)
        if zp_value is None:
            bad("zero-point", f"zero point {zp} is not a constant")
        else:
            if np.any(zp_value.astype(np.int64) != 0):
                bad("zero-point", f"zero point {zp} is not all zeros (TensorRT quantization is symmetric)")
            if scale is not None and zp_value.shape != scale.shape:
                bad("zero-point", f"zero point {zp} has shape {list(zp_value.shape)}, its scale {list(scale.shape)}")
            x_type = g.dtype(x) if node.op_type == "DequantizeLinear" else None
            if x_type is not None and g.dtype(zp) != x_type:
                bad("zero-point", f"zero point {zp} is {_dtype_name(g.dtype(zp))} but {x} is {_dtype_name(x_type)}")

    if scale is None:
        return out
    x_const = g.constant(x)
    x_shape = tuple(x_const.dims) if x_const is not None else None
    consumers = g.consumers.get(node.output[0], [])
    if qtype in (_INT4, _UINT4) and node.op_type == "QuantizeLinear":
        bad("int4", "INT4 is weight-only in TensorRT: QuantizeLinear to INT4 (an activation quantizer) is not allowed")
    if scale.ndim == 1 and scale.size > 1:
        out += _check_per_channel(g, node, label, scale, x_shape, consumers)
    elif scale.ndim >= 2:
        out += _check_block(g, node, label, scale, x_shape, qtype, consumers, opset)
    elif qtype in (_INT4, _UINT4):
        bad("int4", "INT4 must be blockwise (a 2-D scale), not per-tensor")
    return out


def _weight_shape(g: _Graph, node, x_shape):
    """Shape of the weight behind a Q/DQ pair: a DQ fed by Q(weight) takes the weight's shape."""
    if x_shape is not None:
        return x_shape
    producer = g.producer.get(node.input[0])
    if producer is not None and producer.op_type == "QuantizeLinear":
        t = g.constant(producer.input[0])
        return tuple(t.dims) if t is not None else None
    return None


def _is_weight_qdq(g: _Graph, node) -> bool:
    """A Q or DQ of a constant weight: rooted at a constant, or a DequantizeLinear fed by the
    QuantizeLinear of a float weight."""
    if g.rooted_at_constant(node.input[0]):
        return True
    producer = g.producer.get(node.input[0])
    return (node.op_type == "DequantizeLinear" and producer is not None and producer.op_type == "QuantizeLinear"
            and g.rooted_at_constant(producer.input[0]))


def _check_per_channel(g: _Graph, node, label: str, scale: np.ndarray, x_shape, consumers) -> list[Violation]:
    out: list[Violation] = []

    def bad(message: str) -> None:
        out.append(Violation(label, node.op_type, "per-channel", message))

    if not _is_weight_qdq(g, node):
        bad(f"per-channel scale on {node.input[0]}, which is not a constant weight (activations must be per-tensor)")
        return out
    axis = _attr(node, "axis")
    if axis is None:
        bad("per-channel scale without an explicit axis (ONNX defaults to 1, TensorRT's parser assumes 0)")
        return out
    shape = _weight_shape(g, node, x_shape)
    if shape is not None:
        axis = axis % len(shape)
        if shape[axis] != scale.size:
            bad(f"scale length {scale.size} != dim {axis} of the weight {list(shape)}")
    if node.op_type != "DequantizeLinear":
        return out
    for consumer, slot in consumers:
        expected = _per_channel_axis(consumer, slot, shape)
        if expected is None:
            bad(f"per-channel weight feeds {consumer.op_type} input {slot}, where TensorRT documents no per-channel axis")
        elif axis != expected:
            bad(f"axis {axis} is wrong for {consumer.op_type} input {slot}: TensorRT quantizes output channels on axis {expected}")
    return out


def _per_channel_axis(consumer, slot: int, shape) -> int | None:
    if slot != 1:
        return None
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "MatMul" and shape is not None:
        return len(shape) - 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    return None


def _check_block(g: _Graph, node, label: str, scale: np.ndarray, x_shape, qtype, consumers, opset: int) -> list[Violation]:
    out: list[Violation] = []

    def bad(rule: str, message: str) -> None:
        out.append(Violation(label, node.op_type, rule, message))

    if qtype not in (_INT4, _UINT4):
        bad("block", f"block quantization of {_dtype_name(qtype)}: TensorRT 10.3 takes block scales only for INT4")
    if node.op_type != "DequantizeLinear" or x_shape is None:
        bad("int4", f"blockwise quantization must be a DequantizeLinear of a constant weight, got {node.op_type} of {node.input[0]}")
        return out
    if opset < 21:
        bad("int4", f"blockwise DequantizeLinear needs opset >= 21 (block_size), the graph has opset {opset}")
    if len(x_shape) != 2:
        bad("int4", f"INT4 weight {node.input[0]} is {len(x_shape)}-D {list(x_shape)}; TensorRT takes block quantization only on 2-D weights")
    if x_shape and x_shape[-1] % 2:
        bad("int4", f"INT4 weight {node.input[0]} has an odd last dim {x_shape[-1]} (INT4 packs two values per byte)")
    if scale.ndim != len(x_shape):
        bad("int4", f"block scale rank {scale.ndim} != weight rank {len(x_shape)}")
        return out
    blocked = [d for d in range(len(x_shape)) if scale.shape[d] != x_shape[d]]
    if len(blocked) != 1:
        bad("int4", f"scale {list(scale.shape)} vs weight {list(x_shape)}: exactly one blocked axis is allowed, found {len(blocked)}")
    else:
        d = blocked[0]
        block_size = _attr(node, "block_size", 0)
        if x_shape[d] % scale.shape[d]:
            bad("int4", f"weight dim {d} ({x_shape[d]}) is not divisible by the scale's ({scale.shape[d]})")
        elif block_size and -(-x_shape[d] // block_size) != scale.shape[d]:
            bad("int4", f"block_size {block_size} disagrees with the shapes (ONNX needs ceil({x_shape[d]} / {block_size}) scales on dim {d}, got {scale.shape[d]})")
        elif block_size and scale.shape[d] > 1 and x_shape[d] != scale.shape[d] * block_size:
            # ONNX lets the last block be short; TensorRT infers the block from the shapes, so the two would disagree.
            bad("int4", f"dim {d} ({x_shape[d]}) is not a multiple of block_size {block_size}: TensorRT would infer blocks of {x_shape[d] // scale.shape[d]}")
    for consumer, slot in consumers:
        if consumer.op_type not in ("MatMul", "Gemm"):
            bad("int4", f"INT4 weight feeds {consumer.op_type}; TensorRT takes INT4 only on MatMul/Gemm weights")
    return out


def _check_placement(g: _Graph, node, label: str) -> list[Violation]:
    """An activation DequantizeLinear must lead to a quantizable input (module docstring, placement)."""
    if _is_weight_qdq(g, node):
        return []
    wrong: list[str] = []
    frontier = [node.output[0]]
    while frontier:
        for consumer, slot in g.consumers.get(frontier.pop(), []):
            if consumer.op_type in _SHAPE_ONLY and slot == 0:
                frontier.append(consumer.output[0])
            elif consumer.op_type in ("Conv", "ConvTranspose") and slot != 0:
                wrong.append(f"{consumer.op_type} input {slot}")
            elif consumer.op_type not in _QUANTIZABLE:
                wrong.append(consumer.op_type)
    if not wrong:
        return []
    return [Violation(label, node.op_type, "placement", f"activation Q/DQ of {node.input[0]} feeds {', '.join(sorted(set(wrong)))}: TensorRT "
                      "quantizes the inputs of Conv/MatMul/Gemm and residual Adds only (a quantized output before other ops is ONNX "
                      "Runtime's placement)")]


def _check_int4_consumers(g: _Graph) -> list[Violation]:
    out = []
    for name, tensor in g.init.items():
        if tensor.data_type not in (_INT4, _UINT4):
            continue
        for consumer, _ in g.consumers.get(name, []):
            if consumer.op_type != "DequantizeLinear":
                out.append(Violation(_label(consumer, 0), consumer.op_type, "int4-consumer",
                                     f"INT4 initializer {name} feeds {consumer.op_type}; TensorRT reads INT4 only through DequantizeLinear"))
    return out


def _check_op(node, label: str, profiles: list[TensorRTProfile]) -> list[Violation]:
    out: list[Violation] = []
    if node.domain not in ("", "ai.onnx"):
        rule, why = ("ort-only-op", "an ONNX Runtime contrib op") if node.domain == "com.microsoft" else ("custom-domain", "a custom op")
        return [Violation(label, node.op_type, rule, f"{node.domain}.{node.op_type} is {why}; TensorRT's ONNX parser does not have it")]
    missing = [p.name for p in profiles if node.op_type not in p.ops]
    if missing:
        out.append(Violation(label, node.op_type, "unsupported-op", f"{node.op_type} is not supported by {', '.join(missing)}"))
    if node.op_type == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("nearest", "linear"):
            out.append(Violation(label, node.op_type, "op-attribute", f"Resize mode {mode!r}: TensorRT supports nearest and linear"))
        if _attr(node, "antialias", 0):
            out.append(Violation(label, node.op_type, "op-attribute", "Resize antialias is not supported"))
    elif node.op_type == "ScatterND":
        reduction = _attr(node, "reduction", b"none")
        if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
            out.append(Violation(label, node.op_type, "op-attribute", "ScatterND reduction must be none"))
    elif node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        out.append(Violation(label, node.op_type, "op-attribute", "LayerNormalization: only output Y is supported (drop Mean/InvStdDev)"))
    return out


def check_model(model, profiles: tuple[str, ...] = DEFAULT_PROFILES) -> list[Violation]:
    """Every contract violation of `model` (a ModelProto or a path) for the given TensorRT profiles."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise QSchedError(f"unknown TensorRT profile(s) {', '.join(unknown)}", f"use {', '.join(PROFILES)}")
    chosen = [PROFILES[p] for p in profiles]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = _Graph(model)
    out: list[Violation] = []
    for p in chosen:
        if not p.opset_min <= opset <= p.opset_max:
            out.append(Violation("<model>", "opset", "opset", f"opset {opset} is outside {p.name}'s {p.opset_min}-{p.opset_max}"))
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            if v.name in g.init:
                continue
            dims = v.type.tensor_type.shape.dim if v.type.tensor_type.HasField("shape") else None
            if dims is None or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
                shown = "unknown rank" if dims is None else [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in dims]
                out.append(Violation(f"graph {kind} {v.name}", kind, "static-shape", f"shape {shown} is not static"))
    for index, node in enumerate(model.graph.node):
        label = _label(node, index)
        out += _check_op(node, label, chosen)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
            out += _check_qdq(g, node, label, opset)
            if node.op_type == "DequantizeLinear":
                out += _check_placement(g, node, label)
    return out + _check_int4_consumers(g)


def require_contract(paths: list[str | Path], profiles: tuple[str, ...] = DEFAULT_PROFILES) -> None:
    """Raise `ContractError` for the first graph that breaks the contract, listing all its violations."""
    for path in paths:
        violations = check_model(path, profiles)
        if violations:
            raise ContractError(Path(path).name, violations)
