"""Rewrites of a graph OpenVINO compiles for one call's exact shapes, each exact in arithmetic.

A projection whose output is sliced apart (diffusers' GEGLU: one MatMul to twice the
feed-forward's width, then its value and gate halves) becomes one MatMul per slice, over that
slice's weight columns: OpenVINO ran the slicing as a reference-kernel VariadicSplit (0.083 s
of a 1.02 s bf16 sd15 UNet call with dynamic shapes on a 2-core AMX Xeon, 6 % of its layers'
time: bench/results/amx-2026-12-05/results/layers-unet-bf16-512-amx-2cores.txt), and the
halves' consumers read strided rows. With the rewrite, SD-Turbo's UNet at 512 in bf16 with
static shapes took 2.024 s against 2.087 s a call (1.031x; 2-core AMD EPYC, 10 calls of each in
turn: python -m fastimg_bench.rewrite_probe, bench/results/README.md, epyc-2026-12-06b).
Graphs compiled for dynamic shapes are compiled from their file, as OpenVINO caches them. The
export splits a UNet's or ControlNet's projections before quantizing it to int8
(fastimg_export.quantize.read_unet): 1.018x for SD-Turbo's full-int8 UNet, same machine.
"""

import numpy as np

from ..errors import require

# What the graphs compiled for exact shapes are rewritten by: part of their cache key.
REWRITES = ("projection-slices",)


def split_projections(model) -> int:
    """Rewrite each sliced projection of `model` (its shapes static) into one MatMul per slice;
    how many were rewritten. A graph with compressed weights (int8, fp16) is left as it is:
    folding its constants would decompress them."""
    if not _folded(model):  # (the slices' bounds become constants)
        return 0
    from openvino import opset13 as ops

    count = 0
    for add in model.get_ordered_ops():
        found = _sliced_projection(add)
        if found is None:
            continue
        x, weights, bias, transposed, slices = found
        name = add.get_friendly_name()
        for node, start, stop in slices:
            part = weights[start:stop] if transposed else weights[:, start:stop]
            product = ops.matmul(x, ops.constant(np.ascontiguousarray(part)), False, transposed)
            product.set_friendly_name(f"{name}/columns_{start}_{stop}/MatMul")
            shifted = ops.add(product, ops.constant(np.ascontiguousarray(bias[..., start:stop])))
            shifted.set_friendly_name(f"{name}/columns_{start}_{stop}")
            node.output(0).replace(shifted.output(0))
        count += 1
    return count


def _sliced_projection(add):
    """(x, weights, bias, transposed, [(slice node, start, stop)]) where `add` is a MatMul of
    constant weights plus a constant bias whose every consumer is a slice of its last axis;
    else None."""
    if add.get_type_name() != "Add" or add.get_output_size() != 1:
        return None
    users = [target.get_node() for target in add.output(0).get_target_inputs()]
    if not users or any(user.get_type_name() != "Slice" for user in users):
        return None
    product, bias = (add.input_value(i).get_node() for i in range(2))
    if product.get_type_name() != "MatMul":
        product, bias = bias, product
    if product.get_type_name() != "MatMul" or bias.get_type_name() != "Constant":
        return None
    weights = product.input_value(1).get_node()
    attributes = product.get_attributes()
    if weights.get_type_name() != "Constant" or attributes["transpose_a"]:
        return None
    weights, bias = weights.get_data(), bias.get_data()
    rank = add.get_output_partial_shape(0).rank
    width = weights.shape[0 if attributes["transpose_b"] else -1]
    if weights.ndim != 2 or not rank.is_static or bias.shape[-1:] != (width,):
        return None
    slices = []
    for user in users:
        bounds = _constant_slice(user, rank.get_length(), width)
        if bounds is None:
            return None
        slices.append((user, *bounds))
    return product.input_value(0), weights, bias, attributes["transpose_b"], slices


def _constant_slice(node, rank: int, width: int) -> tuple[int, int] | None:
    """(start, stop) of a Slice of the last axis with step 1 and constant bounds, else None."""
    values = []
    for index in range(1, node.get_input_size()):
        source = node.input_value(index).get_node()
        if source.get_type_name() != "Constant" or source.get_data().size != 1:
            return None
        values.append(int(source.get_data().reshape(-1)[0]))
    if len(values) != 4:
        return None
    start, stop, step, axis = values
    if step != 1 or axis not in (-1, rank - 1):
        return None
    kept = range(width)[start:stop]
    return (kept.start, kept.stop) if len(kept) else None


def pad_attention_heads(model, width: int = 64) -> int:
    """Zero-pad each attention's query and key heads narrower than `width` channels to
    `width` (their product, and so the attention, unchanged: the added channels are zeros on
    both sides); how many attentions were padded. Not one of REWRITES: a probe's
    (fastimg_bench.rewrite_probe --rewrite attention-heads), for sd15's 40-channel heads, which
    OpenVINO's fused attention ran at 65.5 ms a 4096-token block against 57.1 ms at 64 channels
    on a 2-core AMX Xeon (bench/results/amx-2026-12-05/results/attention-probe-amx-2cores.json)
    and at 90.1 against 112.1 ms on an AVX-512 EPYC. A graph with compressed weights is left."""
    if not _folded(model):  # (the heads' reshapes become constants)
        return 0
    count = 0
    for softmax in model.get_ordered_ops():
        if softmax.get_type_name() != "Softmax":
            continue
        scores = softmax.input_value(0).get_node()
        if scores.get_type_name() != "MatMul":
            continue
        query = _head_side(scores.input_value(0).get_node(), [0, 2, 1, 3])
        key = _head_side(scores.input_value(1).get_node(), [0, 2, 3, 1])
        if query is None or key is None or query["heads"] != key["heads"]:
            continue
        if query["dim"] != key["dim"] or query["dim"] >= width:
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
    scaled by a constant; its parts, else None."""
    if scaled.get_type_name() != "Multiply":
        return None
    inputs = [scaled.input_value(i).get_node() for i in range(2)]
    transpose = next((node for node in inputs if node.get_type_name() == "Transpose"), None)
    if transpose is None or _constant_values(transpose.input_value(1).get_node()) != order:
        return None
    reshape = transpose.input_value(0).get_node()
    if reshape.get_type_name() != "Reshape":
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
    width = weights.shape[0 if attributes["transpose_b"] else 1]
    if width != heads * dim or (bias is not None and bias.shape[-1:] != (width,)):
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


def _constant_values(node) -> list[int] | None:
    """A small integer Constant's values, else None."""
    if node.get_type_name() != "Constant" or node.get_data().size > 8:
        return None
    return [int(v) for v in node.get_data().reshape(-1)]


def _folded(model) -> bool:
    """Fold `model`'s constant subgraphs into constants; False (nothing done) where its
    weights are compressed."""
    if _compressed(model):
        return False
    require("openvino", "openvino")
    from openvino import passes

    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(model)
    return True


def _compressed(model) -> bool:
    """Whether `model` quantizes (FakeQuantize) or stores weights to decompress (a Convert of
    a Constant: int8, fp16)."""
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Convert" and op.input_value(0).get_node().get_type_name() == "Constant":
            return True
    return False
