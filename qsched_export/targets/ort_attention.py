"""Float attention as one `com.microsoft.MultiHeadAttention` node, for ONNX Runtime's CPU kernel.

The exporter writes `scaled_dot_product_attention` the way torch's ONNX symbolic does: q and k
reshaped to heads and transposed, each multiplied by scale**0.5, `MatMul` -> `Softmax` -> `MatMul`
with v, and the heads transposed and reshaped back. ONNX Runtime runs that as separate kernels that
write the whole (heads x tokens x tokens) score matrix to memory and read it back: 512 MB per
4096-token self-attention of an SD1.5 UNet. Its CPU MultiHeadAttention kernel computes the same
attention in cache-sized blocks (flash attention): on this project's 2-core AVX512 machine, 168 ms
against 300 ms for that attention alone, and 1.12x on a whole W8A8 UNet step
(benchmarks/results/export_unet_fused.json). ONNX Runtime's own transformer optimizer
(`optimize_model(model_type="unet")`) matches none of these attentions: it expects an older
diffusers export, and it also writes CUDA-only ops (GroupNorm, NhwcConv).

The rewrite keeps the q/k/v projections (quantized or not), each reshaped to the [B, S, N*H]
MultiHeadAttention takes, and replaces only the float core; an
attention with Q/DQ on q, k, v or the probabilities (int8 attention) does not match and stays as
exported, and so does a masked one (CLIP's causal text attention, T5's position bias): the
exporter writes the mask as an Add between the scores' MatMul and the Softmax, and the match
requires the MatMul to feed the Softmax directly. It reads constants: run it on a graph ONNX Runtime has constant-folded (basic level),
where the scale and the reshape targets are initializers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
FUSED_OP = "MultiHeadAttention"
# The per-head layout the exporter writes: q and v [B, S, N, H] -> [B, N, S, H]; k -> [B, N, H, S].
_HEADS_PERM = [0, 2, 1, 3]
_KEY_PERM = [0, 2, 3, 1]


@dataclass
class _Graph:
    """Producer/consumer maps and initializers of one graph, for pattern matching. `nodes` is one
    list of the graph's node objects, so `id()` names a node for the whole rewrite."""

    graph: onnx.GraphProto

    def __post_init__(self):
        self.nodes = list(self.graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {init.name: init for init in self.graph.initializer}
        self.outputs = {out.name for out in self.graph.output}

    def const(self, name: str) -> np.ndarray | None:
        init = self.constants.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers[name]
        if name in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class _Heads(NamedTuple):
    """One of q, k, v as the exporter splits it into heads: `Reshape(source, target)` with target
    [B, S, N, H], transposed (and for q and k scaled by `scale`) by `nodes`."""

    source: str
    target: np.ndarray
    scale: float
    nodes: list

    @property
    def num_heads(self) -> int:
        return int(self.target[2])

    @property
    def head_size(self) -> int:
        return int(self.target[3])


def _heads(g: _Graph, name: str, perm: list[int]) -> _Heads | None:
    """`Transpose(perm)(Reshape(x, [B, S, N, H]))`, the target without 0s ("copy this input dim",
    which depends on the input's rank, and the rewrite changes what the Reshape reads)."""
    transpose = g.made_by(name, "Transpose")
    if transpose is None or list(_attr(transpose, "perm", [])) != perm:
        return None
    reshape = g.made_by(transpose.input[0], "Reshape")
    target = None if reshape is None else g.const(reshape.input[1])
    if target is None or target.shape != (4,) or 0 in target or min(target[2:]) < 1:
        return None
    return _Heads(reshape.input[0], target, 1.0, [transpose, reshape])


def _scaled_heads(g: _Graph, name: str, perm: list[int]) -> _Heads | None:
    """`Mul(heads, scalar)`, either operand order."""
    mul = g.made_by(name, "Mul")
    if mul is None:
        return None
    for tensor, factor in (mul.input, reversed(mul.input)):
        value = g.const(factor)
        heads = _heads(g, tensor, perm) if value is not None and value.size == 1 else None
        if heads is not None:
            return heads._replace(scale=float(value.ravel()[0]), nodes=[mul, *heads.nodes])
    return None


def _match(g: _Graph, softmax: onnx.NodeProto, index: int) -> tuple[list, list, onnx.NodeProto, list, list] | None:
    """What replaces the attention around `softmax`: new nodes (q/k/v reshaped to [B, S, N*H] and
    the MultiHeadAttention), their initializers, the Reshape after the attention that then reads
    it, the nodes that go, and the q/k/v head splits that go unless something else reads them."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = g.made_by(softmax.input[0], "MatMul")
    if scores is None or g.only_consumer(scores.output[0], "Softmax") is None:
        return None
    mix = g.only_consumer(softmax.output[0], "MatMul")
    if mix is None or mix.input[0] != softmax.output[0]:
        return None
    query, key = _scaled_heads(g, scores.input[0], _HEADS_PERM), _scaled_heads(g, scores.input[1], _KEY_PERM)
    value = _heads(g, mix.input[1], _HEADS_PERM)
    if query is None or key is None or value is None:
        return None
    if (key.num_heads, key.head_size, value.num_heads) != (query.num_heads, query.head_size, query.num_heads):
        return None
    merge = g.only_consumer(mix.output[0], "Transpose")
    if merge is None or list(_attr(merge, "perm", [])) != _HEADS_PERM:
        return None
    # The heads merged back ([B, S, N, Hv] in memory) are MultiHeadAttention's [B, S, N*Hv] output
    # byte for byte, so the Reshape that follows (to [B, S, C], or to [B*S, C] before a Gemm) can
    # read it instead, given a target without 0s.
    flatten = g.only_consumer(merge.output[0], "Reshape")
    target = None if flatten is None else g.const(flatten.input[1])
    if target is None or 0 in target:
        return None
    # MultiHeadAttention takes [B, S, N*H] inputs. What the head split read may have another rank
    # (ORT's basic pass turns a biased projection into a Gemm on [B*S, C]), so each is reshaped:
    # [B, S, N, H] and [B, S, N*H] are the same bytes.
    # Named by count, not after the Softmax: exporters may leave node names empty or repeated.
    prefix = f"qsched_attention_{index}/{FUSED_OP}"
    nodes, inits = [], []
    for role, heads in (("query", query), ("key", key), ("value", value)):
        target = np.array([*heads.target[:2], heads.num_heads * heads.head_size], np.int64)
        inits.append(numpy_helper.from_array(target, f"{prefix}/{role}_shape"))
        nodes.append(helper.make_node("Reshape", [heads.source, inits[-1].name], [f"{prefix}/{role}"], name=f"{prefix}/{role}_reshape"))
    # Q·Kᵀ is scaled on both sides (sqrt(scale) each, as torch's symbolic does): MHA takes the product.
    nodes.append(helper.make_node(FUSED_OP, [n.output[0] for n in nodes], [f"{prefix}_output"], name=prefix, domain=MS_DOMAIN,
                                  num_heads=query.num_heads, scale=query.scale * key.scale))
    return nodes, inits, flatten, [merge, mix, softmax, scores], [*query.nodes, *key.nodes, *value.nodes]


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace every float attention core in `model` by a MultiHeadAttention node, in place;
    returns how many."""
    g = _Graph(model.graph)
    fused_before: dict[int, list] = {}  # the final Reshape's id -> the nodes that now compute what it reads
    gone: set[int] = set()
    heads: list[onnx.NodeProto] = []
    for softmax in [n for n in g.nodes if n.op_type == "Softmax"]:
        found = _match(g, softmax, len(fused_before))
        if found is not None:
            new, inits, flatten, core, sides = found
            flatten.input[0] = new[-1].output[0]
            fused_before[id(flatten)] = new
            model.graph.initializer.extend(inits)
            gone.update(id(n) for n in core)
            heads.extend(sides)
    if not fused_before:
        return 0
    # A q/k/v Reshape/Transpose/Mul goes once nothing left reads it (the three per input form a
    # chain, so this settles in three rounds).
    while True:
        read = g.outputs | {name for n in (*g.nodes, *(m for new in fused_before.values() for m in new)) if id(n) not in gone for name in n.input}
        unread = {id(n) for n in heads if id(n) not in gone and not any(out in read for out in n.output)}
        if not unread:
            break
        gone |= unread
    # Each MultiHeadAttention goes just before its final Reshape: the projections it reads come earlier.
    nodes = [m for node in g.nodes if id(node) not in gone for m in (*fused_before.get(id(node), ()), node)]
    model.graph.node.extend(nodes)  # copies, appended after the old nodes ...
    del model.graph.node[:len(g.nodes)]  # ... which then go
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused_before)
