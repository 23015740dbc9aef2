"""Expand w4a8s' int4 weights to int8 once, layer by layer, before ONNX Runtime sees the graph.

A w4a8s graph stores each weight as int4 nibbles in a uint8 buffer with its block scales, and
computes the int8 weight its int8 kernels multiply with constant ops (unpack, scale, round,
cast: qsched_export/export/qdq.py `_RequantizedWeight`) ending in `Cast(to=INT8) ->
DequantizeLinear`. ONNX Runtime folds those ops when a session starts, but keeps every
intermediate tensor of every layer until the end of its folding pass: an SD1.5-sized UNet
peaked at 24 GB (measured here), where the int8 result is 0.86 GB. `fold_int4_weights` evaluates
each chain on its own (onnx's reference evaluator: numpy, the ONNX semantics), once per weight
even where the unrolled steps repeat it, and puts the int8 initializer in its place; the result
is the graph ONNX Runtime would have folded to, bit for bit, at the memory of one layer.

Torch-free: numpy and onnx only.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

INT8 = 3  # onnx.TensorProto.INT8


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def int4_chains(model) -> list:
    """The `Cast(to=INT8)` nodes that end a constant int4 -> int8 chain feeding a DequantizeLinear."""
    return [cast for cast, _nodes in _chains(model)]


def _chains(model) -> list[tuple]:
    """`(cast, nodes)` per int4 -> int8 chain (`int4_chains`), `nodes` in graph order; the graph's
    indexes are built once for all of them."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    order = {id(n): i for i, n in enumerate(graph.node)}
    chains, seen = [], set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        cast = producer.get(node.input[0])
        if cast is None or cast.op_type != "Cast" or _attr(cast, "to") != INT8 or cast.output[0] in seen:
            continue
        nodes = _constant_subgraph(cast, producer, inits)
        if nodes is not None:
            seen.add(cast.output[0])
            chains.append((cast, sorted(nodes, key=lambda n: order[id(n)])))
    return chains


def _constant_subgraph(end, producer, inits):
    """The nodes `end` depends on, if all of them hang from initializers and Constant nodes (else None)."""
    nodes, stack, seen = [], [end], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        for name in node.input:
            if not name or name in inits:
                continue
            parent = producer.get(name)
            if parent is None:
                return None  # a graph input: not constant
            stack.append(parent)
    if not any(n.op_type in ("BitwiseAnd", "BitShift") for n in nodes):
        return None  # only w4a8s' unpacking chains, not other int8 casts
    return nodes


def fold_int4_weights(model) -> int:
    """Replace every w4a8s int4 -> int8 chain of `model` (in place) by its int8 initializer.
    Returns how many distinct weights were folded."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    chains = _chains(model)
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}  # tensor -> the (node, input slot) pairs that read it
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    opsets = list(model.opset_import)
    folded: dict[tuple, str] = {}
    dead: set[int] = set()
    for cast, nodes in chains:
        roots = sorted({name for n in nodes for name in n.input if name in inits})
        # The unrolled steps repeat the chain of one weight (torch.onnx gives each repeat its own
        # folded constants, so compare by the nibble buffer the chain unpacks): fold it once.
        key = tuple(sorted({name for n in nodes if n.op_type == "BitwiseAnd" for name in n.input if name in inits
                            and inits[name].data_type == onnx.TensorProto.UINT8}))
        if key not in folded:
            sub = helper.make_graph([onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes], "int4", [],
                                    [helper.make_tensor_value_info(cast.output[0], onnx.TensorProto.INT8, None)], [inits[r] for r in roots])
            value = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets, ir_version=model.ir_version)).run(None, {})[0]
            name = f"{key[0]}.int8"
            graph.initializer.append(numpy_helper.from_array(value.astype("int8"), name))
            folded[key] = name
        for consumer, i in readers.get(cast.output[0], []):
            consumer.input[i] = folded[key]
        dead.update(id(n) for n in nodes)
    if dead:
        kept = [n for n in graph.node if id(n) not in dead]
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        kept_inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
    return len(folded)


@contextlib.contextmanager
def ort_source(path: str | Path) -> Iterator[str]:
    """The file ONNX Runtime should open for `path`: the path itself, or, for a w4a8s graph, a copy
    with its int4 weights folded to int8 (`fold_int4_weights`) in a temporary folder, removed when
    the block ends (a session holds its weights once created). Reading the graph's structure
    (without its external data) is what tells them apart."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    # .ort files (ort-mobile) are ONNX Runtime's own format, built from already-folded graphs.
    model = onnx.load(str(path), load_external_data=False) if path.suffix == ".onnx" else None
    if model is None or not int4_chains(model):
        yield str(path)
        return
    load_external_data_for_model(model, str(path.parent))  # what onnx.load does with the weights
    fold_int4_weights(model)
    with tempfile.TemporaryDirectory(prefix="qsched-int4-") as tmp:
        folded = Path(tmp) / path.name
        # Protobuf caps one message at 2 GB: larger graphs keep their weights in an external-data file.
        big = model.ByteSize() > (1 << 31) - (1 << 20)
        onnx.save_model(model, str(folded), save_as_external_data=big, all_tensors_to_one_file=True, location=f"{path.name}.data")
        yield str(folded)
