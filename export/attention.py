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
from onnx import helper

from .onnx_graph import GraphIndex, drop_dead_nodes

MS_DOMAIN = "com.microsoft"


def _perm(node) -> list[int]:
    return list(next(a.ints for a in node.attribute if a.name == "perm"))


def _heads(g: GraphIndex, reshape) -> int | None:
    """H from a Reshape to [B, -1, H, d] whose shape is a Concat with a constant third part."""
    concat = g.parent(reshape, 1, "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    value = g.constant_value(concat.input[2])
    return int(np.asarray(value).reshape(-1)[0]) if value is not None else None


def _head_input(g: GraphIndex, node, perm: list[int], scaled: bool):
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
    g = GraphIndex(model.graph)
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
    drop_dead_nodes(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)
