"""Tracing a module to an ONNX file, the INT4 packing pass, saving (external data over 2 GB) and checks.

Exporter: torch.onnx's TorchScript exporter (`dynamo=False`), which lets each quantized layer
emit its exact Q/DQ (or MatMulNBits) nodes through `autograd.Function.symbolic` (see `qdq.py`).
docs/EXPORTER.md has the measurements against the dynamo exporter and the plan for the torch
release that drops this one.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qsched_export.errors import QSchedError

if TYPE_CHECKING:  # onnx is imported where it is used; the annotations only name it
    import onnx

TWO_GB = 2**31
GRAPH_ROOM = 2**27  # 128 MiB for nodes and constants besides the initializers
MIN_OPSET = 17  # LayerNormalization is a single op from 17 on
MAX_OPSET = 21
INT4_MIN_OPSET = 21  # DequantizeLinear's block_size and INT4 type came in opset 21
STATIC_QDQ_OPSET = 20


def default_opset(scheme) -> int:
    """21 (the newest ONNX Runtime and TensorRT 10.6+ read), except for static int8 activations:
    20. At opset 21, ONNX Runtime 1.32's CPU optimizer breaks the graph when it propagates an
    activation DequantizeLinear through a Reshape and also converts int8 activations to uint8
    (QDQPropagationTransformer + QDQS8ToU8Transformer): the session fails to load with
    "output_dtype INT8 does not match y_zero_point type UINT8". Opset 20 loads and fuses
    (measured here), and it is also TensorRT 10.3's (JetPack 6) newest opset. Block (INT4)
    weights need 21 whatever the activations."""
    return STATIC_QDQ_OPSET if scheme.static_activations and not scheme.block_weights else MAX_OPSET


# The TorchScript exporter lints its IR after each of its passes; on an unrolled, quantized UNet
# that is most of the export (the sample's w8a8: 85 s with lint, 23 s without, byte-identical
# ONNX). Lint only checks, and `check_model` verifies the result, so the export skips it, but
# only on the torch releases where that was measured (the private hook may change meaning), and
# only for the duration of one export call. `QSCHED_EXPORT_JIT_LINT=1` keeps it (the tests run
# one export each way and compare the bytes).
LINT_ENV = "QSCHED_EXPORT_JIT_LINT"
LINT_SKIP_TORCH = ((2, 4), (2, 14))  # inclusive (major, minor) range where skipping was measured


def _torch_minor() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def lint_skipped() -> bool:
    """Whether `export_module` skips the TorchScript IR lint here (see LINT_SKIP_TORCH)."""
    lo, hi = LINT_SKIP_TORCH
    return os.environ.get(LINT_ENV) != "1" and callable(getattr(torch._C, "_jit_pass_lint", None)) and lo <= _torch_minor() <= hi


@contextlib.contextmanager
def _without_ir_lint() -> Iterator[None]:
    if not lint_skipped():
        yield
        return
    original = torch._C._jit_pass_lint
    torch._C._jit_pass_lint = lambda graph: None
    try:
        yield
    finally:
        torch._C._jit_pass_lint = original


ONNX_TO_NUMPY = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool", 11: "float64"}


EXPORTER_ENV = "QSCHED_EXPORTER"  # "dynamo": torch.onnx's dynamo exporter instead (docs/EXPORTER.md)
EXPORTERS = ("torchscript", "dynamo")


def export_module(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, opset: int,
                  microsoft_ops: bool = False, exporter: str | None = None) -> onnx.ModelProto:
    """Trace `module(*args)` with static shapes and return the ModelProto (weights loaded), ready for
    saving. `microsoft_ops` declares the com.microsoft domain (MatMulNBits). The trace goes to a
    scratch file beside `path` so external data never mixes. `exporter`: "torchscript" (default)
    or "dynamo" (None: the QSCHED_EXPORTER environment variable, else torchscript)."""
    import onnx

    exporter = exporter or os.environ.get(EXPORTER_ENV) or "torchscript"
    if exporter not in EXPORTERS:
        raise QSchedError(f"unknown exporter {exporter!r} (from {EXPORTER_ENV})", f"use one of {', '.join(EXPORTERS)}")
    scratch = path.parent / f".trace-{path.stem}"
    scratch.mkdir()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The exporters' deprecation and tracer warnings are about code we do not control
            # (diffusers' shape asserts); they do not change the graph.
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                _export_dynamo(module, args, scratch / "model.onnx", input_names, output_names, opset)
            else:
                with _without_ir_lint():  # see LINT_ENV
                    torch.onnx.export(module, args, str(scratch / "model.onnx"), dynamo=False, opset_version=opset,
                                      input_names=list(input_names), output_names=list(output_names), do_constant_folding=True,
                                      custom_opsets={"com.microsoft": 1} if microsoft_ops else None)
        model = onnx.load(str(scratch / "model.onnx"), load_external_data=True)
        if exporter == "dynamo":
            for node in model.graph.node:  # per-node source locations and FX names: most of its bytes
                del node.metadata_props[:]
                node.doc_string = ""
        return model
    finally:
        for f in sorted(scratch.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        scratch.rmdir()


def _export_dynamo(module, args, path: Path, input_names, output_names, opset: int) -> None:
    """torch.onnx.export(dynamo=True): the export layers call torch.library custom ops, which
    onnxscript writes as the same Q/DQ (MatMulNBits) nodes (qdq.dynamo_translations)."""
    import io

    from qsched_export.export import qdq

    with qdq.use_dynamo_ops(), contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=list(input_names),
                                    output_names=list(output_names), custom_translation_table=qdq.dynamo_translations(opset),
                                    optimize=False, external_data=True)
    # Not its optimizer: it folds every weight's DequantizeLinear into a float initializer (no int8
    # kernel fuses, TensorRT's contract breaks) and w4a8s' int4 unpacking (measured, docs/EXPORTER.md).
    program.save(str(path), external_data=True)


def pack_int4_weights(model) -> int:
    """Turn the int8 initializers feeding blockwise DequantizeLinear (values in [-8, 7]) into INT4
    initializers (two per byte, first in the low nibble, as ONNX and TensorRT pack). Returns the
    count. (w4a8s packs its nibbles into uint8 buffers itself: `qdq.pack_nibbles`.)"""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    packed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not any(a.name == "block_size" and a.i > 0 for a in node.attribute):
            continue
        tensor = inits.get(node.input[0])
        if tensor is None or tensor.data_type != onnx.TensorProto.INT8:
            continue
        values = numpy_helper.to_array(tensor).ravel()
        if values.min(initial=0) < -8 or values.max(initial=0) > 7:
            raise ValueError(f"{tensor.name} holds values outside int4 [-8, 7]")
        nibbles = (np.pad(values, (0, values.size % 2)).astype(np.uint8) & 0xF)
        tensor.raw_data = (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()
        tensor.data_type = onnx.TensorProto.INT4
        packed += 1
    return packed


def save_model(model, path: Path) -> None:
    """Save; a model over 2 GB keeps its tensors in one `<name>.data` file beside it (ONNX external data)."""
    import onnx

    # ModelProto.ByteSize() itself fails past 2 GB, so judge by the weights, with room for the graph.
    if _initializer_bytes(model) >= TWO_GB - GRAPH_ROOM:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _initializer_bytes(model) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def check_model(path: Path) -> None:
    """`onnx.checker` (full check, which runs strict shape inference) on the saved file; by path so
    external data is handled."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise QSchedError(f"exported {path.name} fails onnx.checker: {str(exc).splitlines()[0]}",
                          "report this as a bug with the model and scheme") from None


def io_specs(path: Path) -> tuple[dict, dict]:
    """`({input: (shape, dtype)}, {output: (shape, dtype)})` of a saved graph, all dims static. Read
    without external data, so it costs nothing for models over 2 GB."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if not all(_dims(v) is not None for v in graph.output):
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    return ({v.name: (_dims(v), _dtype(v)) for v in graph.input}, {v.name: (_dims(v), _dtype(v)) for v in graph.output})


def _dims(value) -> tuple[int, ...] | None:
    dims = value.type.tensor_type.shape.dim
    if not dims and not value.type.tensor_type.HasField("shape"):
        return None
    if any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _dtype(value) -> str:
    return ONNX_TO_NUMPY.get(value.type.tensor_type.elem_type, str(value.type.tensor_type.elem_type))


def op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
