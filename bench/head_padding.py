"""Attention heads zero-padded to a wider channel count, for rewrite_probe --rewrite
attention-heads: a rewrite the runtime does not make.

sd15's heads are 40 channels wide. OpenVINO's fused attention ran a 4096-token block of 8 such
heads in 65.5 ms against 57.1 ms at 64 channels on a 2-core AMX Xeon
(bench/results/amx-2026-12-05/results/attention-probe-amx-2cores.json), and in 90.1 against
112.1 ms on an AVX-512 EPYC (bench/results/attention-probe-epyc-avx512.json). Padding the query
and key heads with zero channels leaves their products, so the attention, as they were; the
value's heads are left as they are.
"""

import numpy as np

QUERY_ORDER, KEY_ORDER = (
    [0, 2, 1, 3],
    [0, 2, 3, 1],
)  # torch's export: [B, heads, S, d], [B, heads, d, S]


def pad_attention_heads(model, width: int = 64) -> int:
    """Zero-pad each attention's query and key heads narrower than `width` channels to `width`;
    how many attentions were padded (a graph with compressed weights: none)."""
    from fastimg.backends.openvino_rewrites import folded

    if not folded(model):  # (the heads' reshapes become constants)
        return 0
    count = 0
    for softmax in model.get_ordered_ops():
        scores = softmax.input_value(0).get_node() if softmax.get_type_name() == "Softmax" else None
        if scores is None or scores.get_type_name() != "MatMul":
            continue
        attributes = scores.get_attributes()
        if attributes["transpose_a"] or attributes["transpose_b"]:
            continue
        query = _head_side(scores.input_value(0).get_node(), QUERY_ORDER)
        key = _head_side(scores.input_value(1).get_node(), KEY_ORDER)
        if query is None or key is None:
            continue
        if (query["heads"], query["dim"]) != (key["heads"], key["dim"]) or query["dim"] >= width:
            continue
        for side in (query, key):
            _pad_side(side, width)
        count += 1
    if count:
        model.validate_nodes_and_infer_types()  # the scores' inputs are wider now
    return count


def _head_side(scaled, order: list[int]) -> dict | None:
    """The query or key side of an attention's scores as torch exports it: a projection with
    constant weights (and maybe bias), reshaped to [B, -1, heads, dim], transposed by `order`,
    times one constant, each step read by the next alone; its parts, else None."""
    if scaled.get_type_name() != "Multiply" or not _alone(scaled):
        return None
    inputs = [scaled.input_value(i).get_node() for i in range(2)]
    transpose = next((node for node in inputs if node.get_type_name() == "Transpose"), None)
    scale = next((node for node in inputs if node is not transpose), None)
    if transpose is None or scale.get_type_name() != "Constant" or scale.get_data().size != 1:
        return None
    if not _alone(transpose) or _constant_values(transpose.input_value(1).get_node()) != order:
        return None
    reshape = transpose.input_value(0).get_node()
    if reshape.get_type_name() != "Reshape" or not _alone(reshape):
        return None
    shape = _constant_values(reshape.input_value(1).get_node())
    if shape is None or len(shape) != 4 or shape[1] != -1 or min(shape[2:]) < 1:
        return None
    bias, product = None, reshape.input_value(0).get_node()
    if product.get_type_name() == "Add":
        added = [product.input_value(i).get_node() for i in range(2)]
        product, bias = added if added[1].get_type_name() == "Constant" else added[::-1]
        if bias.get_type_name() != "Constant":
            return None
        bias = bias.get_data()
    weights = product.input_value(1).get_node() if product.get_type_name() == "MatMul" else None
    if weights is None or weights.get_type_name() != "Constant":
        return None
    attributes, weights = product.get_attributes(), weights.get_data()
    heads, dim = shape[2], shape[3]
    if attributes["transpose_a"] or weights.ndim != 2:
        return None
    projected = weights.shape[0 if attributes["transpose_b"] else 1]
    if projected != heads * dim or (bias is not None and bias.shape[-1:] != (projected,)):
        return None
    return {
        "transpose": transpose,
        "x": product.input_value(0),
        "weights": weights,
        "transposed": attributes["transpose_b"],
        "bias": bias,
        "shape": shape,
        "heads": heads,
        "dim": dim,
        "special_zero": reshape.get_attributes()["special_zero"],
    }


def _pad_side(side: dict, width: int) -> None:
    """Make `side` (_head_side's) project to `width` channels a head, the added ones zero."""
    from openvino import opset13 as ops

    heads, dim, weights = side["heads"], side["dim"], side["weights"]
    if side["transposed"]:  # [heads * dim, in]
        blocks = weights.reshape(heads, dim, -1)
        padded = np.pad(blocks, ((0, 0), (0, width - dim), (0, 0))).reshape(heads * width, -1)
    else:  # [in, heads * dim]
        blocks = weights.reshape(-1, heads, dim)
        padded = np.pad(blocks, ((0, 0), (0, 0), (0, width - dim))).reshape(-1, heads * width)
    padded = ops.constant(np.ascontiguousarray(padded))
    out = ops.matmul(side["x"], padded, False, side["transposed"])
    if side["bias"] is not None:
        bias = side["bias"].reshape(*side["bias"].shape[:-1], heads, dim)
        pads = [(0, 0)] * (bias.ndim - 1) + [(0, width - dim)]
        bias = np.pad(bias, pads).reshape(*side["bias"].shape[:-1], heads * width)
        out = ops.add(out, ops.constant(np.ascontiguousarray(bias)))
    shape = np.array([*side["shape"][:3], width], dtype=np.int64)
    reshaped = ops.reshape(out, ops.constant(shape), side["special_zero"])
    side["transpose"].input(0).replace_source_output(reshaped.output(0))


def _alone(node) -> bool:
    """Whether `node`'s one output is read by one input only (rewiring it changes nothing else)."""
    return node.get_output_size() == 1 and len(node.output(0).get_target_inputs()) == 1


def _constant_values(node) -> list[int] | None:
    """A small integer Constant's values, else None."""
    if node.get_type_name() != "Constant" or node.get_data().size > 8:
        return None
    return [int(v) for v in node.get_data().reshape(-1)]
