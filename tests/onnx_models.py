"""ONNX models built by hand in the tests, stamped so every ONNX Runtime we support loads them.

`onnx.helper.make_model` stamps the installed onnx package's IR version (14 with onnx 1.23),
which an ONNX Runtime older than that onnx refuses to load (ONNX Runtime 1.30 does). The
exporter's graphs carry IR version 10 (torch.onnx writes it, measured with torch 2.14), which
ONNX Runtime 1.20 and later load: the tests' graphs carry the same.
"""

from __future__ import annotations

import onnx
from onnx import helper

IR_VERSION = 10  # what the exporter writes (torch.onnx, opset 17-21)


def make_model(graph: onnx.GraphProto, opset: int = 21, *, ms_domain: bool = False) -> onnx.ModelProto:
    """`graph` as a model at IR version 10, importing the default domain at `opset` (and
    com.microsoft 1 with `ms_domain`, for MatMulNBits and the like)."""
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_domain else [])
    needed = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    if needed > IR_VERSION:
        raise ValueError(f"opset {opset} needs IR version {needed}, newer than the {IR_VERSION} the exporter writes and "
                         "ONNX Runtime 1.20 loads: build the test graph at opset 22 or lower")
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
