"""Rewrites of a graph before OpenVINO compiles it, each exact in arithmetic: a sliced projection
split (here), and an upsampling's convolution run per output phase (openvino_upsampling). Each
holds at every size the graph takes: its projections, a VAE decoder's upsamplings (by constant
scales), a UNet's (to its skip connections' sizes, cropped), for dynamic shapes as for exact ones.

A projection whose output is sliced apart (diffusers' GEGLU: one MatMul to twice the
feed-forward's width, then its value and gate halves) becomes one MatMul per slice, over that
slice's weight columns: OpenVINO ran the slicing as a reference-kernel VariadicSplit (0.083 s
of a 1.02 s bf16 sd15 UNet call with dynamic shapes on a 2-core AMX Xeon, 6 % of its layers'
time: bench/results/amx-2026-12-05/results/layers-unet-bf16-512-amx-2cores.txt), and the
halves' consumers read strided rows. With the rewrite, SD-Turbo's UNet at 512 in bf16 with
static shapes took 2.024 s against 2.087 s a call (1.031x; 2-core AMD EPYC, 10 calls of each in
turn: python -m fastimg_bench.rewrite_probe, bench/results/README.md, epyc-2026-12-06b).
The export splits a UNet's or ControlNet's projections before quantizing it to int8
(fastimg_export.quantize.read_unet): 1.018x for SD-Turbo's full-int8 UNet, same machine.
"""

from pathlib import Path

import numpy as np

from ..errors import require
from .openvino_upsampling import fold_upsampling


def rewrite(model) -> dict[str, int]:
    """Rewrite `model` by each of REWRITES where it holds at the sizes its shapes allow, its
    constants folded first: how many parts each rewrite changed. A graph with compressed
    weights (int8, fp16) is left as it is: folding its constants would decompress them."""
    if not folded(model):
        return dict.fromkeys(REWRITES, 0)
    return {name: made(model) for name, made in REWRITTEN_BY.items()}


def split_projections(model) -> int:
    """Rewrite each sliced projection of `model` (its ranks static) into one MatMul per slice;
    how many were rewritten. A graph with compressed weights (int8, fp16) is left as it is:
    folding its constants would decompress them."""
    return _split(model) if folded(model) else 0  # (the slices' bounds become constants)


def _split(model) -> int:
    """split_projections on a graph whose constants are folded."""
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


# Each rewrite of a graph whose constants are folded, by name, in the order they are made.
REWRITTEN_BY = {"projection-slices": _split, "upsampled-convolutions": fold_upsampling}
# What every float graph is rewritten by before it is compiled: part of its cache key.
REWRITES = tuple(REWRITTEN_BY)


def cache_key() -> dict:
    """What a compiled cache's key holds of the rewrites its graphs were compiled after: their
    names, and a digest of the code that makes them (a blob compiled after a rewrite that has
    changed since is never imported)."""
    import hashlib

    from . import openvino_upsampling

    digest = hashlib.sha256()
    for module in (__file__, openvino_upsampling.__file__):
        digest.update(Path(module).read_bytes())
    return {"rewrites": list(REWRITES), "rewrites_code": digest.hexdigest()[:16]}


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


def folded(model) -> bool:
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
