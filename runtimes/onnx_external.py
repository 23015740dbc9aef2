"""The external-data files an ONNX graph makes its runtime open, read straight from the protobuf.

`onnx.load(..., load_external_data=False)` would parse every inline weight into memory (up to
2 GB for a graph without external data, on every `run` on a Jetson); this walks the wire format
instead and skips each length-delimited field it does not need, so the cost is the number of
nodes and tensors, not the bytes of the weights. Stdlib only.

Field numbers are onnx.proto's (onnx/onnx.proto3): tensors sit in graph initializers, sparse
initializers, node attributes (`Constant` values) and subgraphs, and in model-local functions.
"""

from __future__ import annotations

import mmap
from pathlib import Path

_LEN = 2  # wire type of strings, bytes, sub-messages and packed repeated fields
# message -> {field number: message type of the sub-message held there}
_SCHEMA = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
}
_TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data: repeated StringStringEntryProto {key = 1, value = 2}


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            yield field, pos, pos + size
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise ValueError("truncated protobuf message")


def _location(buf, start: int, end: int) -> str | None:
    """The `location` value of one StringStringEntryProto, else None."""
    entry = {field: bytes(buf[s:e]) for field, s, e in _fields(buf, start, end)}
    return entry.get(2, b"").decode("utf-8") if entry.get(1) == b"location" else None


def _walk(buf, kind: str, start: int, end: int, found: list[str]) -> None:
    for field, s, e in _fields(buf, start, end):
        if kind == "tensor":
            if field == _TENSOR_EXTERNAL_DATA and (location := _location(buf, s, e)) is not None:
                found.append(location)
        elif (child := _SCHEMA[kind].get(field)) is not None:
            _walk(buf, child, s, e, found)


def external_data_locations(path: str | Path) -> list[str]:
    """Every external-data `location` in the ONNX file at `path`, in file order, without repeats
    (relative to the graph's folder, as written). Raises ValueError for a file that is not a
    well-formed ONNX protobuf."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            found: list[str] = []
            try:
                _walk(buf, "model", 0, len(buf), found)
            except IndexError:
                raise ValueError("truncated protobuf message") from None
    return list(dict.fromkeys(found))
