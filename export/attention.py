"""Rewrite exported attention into ONNX Runtime's fused com.microsoft.MultiHeadAttention.

torch exports scaled_dot_product_attention as
    q3 -> Reshape[B,S,H,d] -> Transpose(0,2,1,3) -> Mul(sqrt(scale)) --\\
    k3 -> Reshape[B,S,H,d] -> Transpose(0,2,3,1) -> Mul(sqrt(scale)) -> MatMul -> Softmax
    v3 -> Reshape[B,S,H,d] -> Transpose(0,2,1,3) ------------------------------------ MatMul
       -> Transpose(0,2,1,3) -> Reshape[B,S,H*d]
which ONNX Runtime's CPU fusion does not recognise. The whole chain becomes one
MultiHeadAttention(q3, k3, v3) node with num_heads=H and the default 1/sqrt(d) scale, which ONNX
Runtime runs with its fused (flash) CPU kernel. Only ONNX Runtime reads the rewritten graph;
OpenVINO and TensorRT get the standard one and fuse it themselves.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.constants = {i.name: i for i in graph.initializer}

    def parent(self, node, index: int, op: str):
        """The node producing input `index` of `node`, if it is an `op`."""
        if index >= len(node.input):
            return None
        found = self.producer.get(node.input[index])
        return found if found is not None and found.op_type == op else None

    def only_child(self, node, op: str):
        """The single consumer of `node`'s first output, if it is an `op`."""
        children = self.consumers.get(node.output[0], [])
        return children[0] if len(children) == 1 and children[0].op_type == op else None

    def constant_value(self, name: str):
        """The value of a Constant node or initializer output, else None."""
        if name in self.constants:
            return numpy_helper.to_array(self.constants[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def _perm(node) -> list[int]:
    return list(next(a.ints for a in node.attribute if a.name == "perm"))


def _heads(g: _Graph, reshape) -> int | None:
    """H from a Reshape to [B, -1, H, d] whose shape is a Concat with a constant third part."""
    concat = g.parent(reshape, 1, "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    value = g.constant_value(concat.input[2])
    return int(np.asarray(value).reshape(-1)[0]) if value is not None else None


def _head_input(g: _Graph, node, perm: list[int], scaled: bool):
    """(projection output, Reshape, H) behind [Mul ->] Transpose(perm) -> Reshape, or None."""
    if scaled:
        if node is None or node.op_type != "Mul":
            return None
        node = g.parent(node, 0, "Transpose")
    if node is None or node.op_type != "Transpose" or _perm(node) != perm:
        return None
    reshape = g.parent(node, 0, "Reshape")
    if reshape is None:
        return None
    return reshape.input[0], _heads(g, reshape)


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace every SDPA chain in `model` by MultiHeadAttention; return how many were fused."""
    g = _Graph(model.graph)
    remove, fused = set(), {}
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        scores = g.parent(softmax, 0, "MatMul")
        weighted = g.only_child(softmax, "MatMul")
        if scores is None or weighted is None:
            continue
        q = _head_input(g, g.producer.get(scores.input[0]), [0, 2, 1, 3], scaled=True)
        k = _head_input(g, g.producer.get(scores.input[1]), [0, 2, 3, 1], scaled=True)
        v = _head_input(g, g.producer.get(weighted.input[1]), [0, 2, 1, 3], scaled=False)
        back = g.only_child(weighted, "Transpose")
        merge = g.only_child(back, "Reshape") if back is not None else None
        if None in (q, k, v, merge) or _perm(back) != [0, 2, 1, 3]:
            continue
        heads = {q[1], k[1], v[1]}
        if len(heads) != 1 or None in heads:
            continue
        fused[id(merge)] = helper.make_node(
            "MultiHeadAttention",
            [q[0], k[0], v[0]],
            [merge.output[0]],
            name=softmax.name.replace("Softmax", "MultiHeadAttention"),
            domain=MS_DOMAIN,
            num_heads=heads.pop(),
        )
        remove.update(id(n) for n in (scores, softmax, weighted, back))
    if not fused:
        return 0
    # Each fused node takes the place of the chain's last node: its inputs (the projections)
    # are computed earlier and its consumers later, so the graph stays topologically sorted.
    nodes = [fused.get(id(n), n) for n in model.graph.node if id(n) not in remove]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_dead_nodes(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes nothing reaches the outputs through (node order is not assumed sorted)."""
    producer = {out: n for n in graph.node for out in n.output}
    live, pending = set(), [o.name for o in graph.output]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and id(node) not in live:
            live.add(id(node))
            pending.extend(node.input)
    kept = [n for n in graph.node if id(n) in live]
    del graph.node[:]
    graph.node.extend(kept)
