"""Rewrite exported GroupNorms as per-channel reductions, for OpenVINO on the CPU.

torch exports GroupNorm(G) of x [N, C, *spatial] as
    x -> Reshape[N, G, -1] -> InstanceNormalization -> Reshape(Shape(x)) -> Mul(gamma) -> Add(beta)
and OpenVINO's CPU plugin runs the middle on the planar [N, G, -1] tensor: every GroupNorm
between two convolutions (which run channels-last) reorders the whole tensor there and back.
On a 2-core AMX Xeon those reorders were a fifth of sd15's bf16 VAE decoder at 512
(bench/results/README.md, group-norm-probe). The rewrite keeps the tensor as it is:

    m = group mean of ReduceMean(x, spatial axes)          (per channel, [N, C, 1, 1])
    v = group mean of ReduceMean((x - m)^2, spatial axes)
    scale = gamma / sqrt(v + eps);  y = x * scale + (beta - m * scale)

the group means taken on the small [N, C] tensors ([N, G, C/G] -> mean -> broadcast back). In
fp32 it is the same function (to rounding); the variance is taken about the mean, as
InstanceNormalization takes it, not as E[x^2] - m^2, which loses bf16's few bits.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_graph import GraphIndex, drop_dead_nodes, drop_unused_initializers

SCOPE = "channel_reductions"  # the name under which each rewritten GroupNorm's nodes are
# The nodes of a rewritten GroupNorm that int8 quantization leaves in float (a pattern of
# NNCF's IgnoredScope): all but the three that read its input (its mean, its centring, its
# scaling), so that the input is quantized once, as the exported GroupNorm's is, and the small
# per-channel statistics are not (quantizers on them made the sd15 VAE decoder slower than
# the exported graph's int8, bench/results/README.md).
FLOAT_NODES = rf".*/{SCOPE}/(?!(channel_mean|centred|scaled)$).*"


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value ONNX's shape inference knows one for."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in infos
        if info.type.tensor_type.HasField("shape")
    }


def _group_norm(g: GraphIndex, norm) -> tuple | None:
    """(the chain's nodes, x, y, groups, gamma, beta, epsilon) where `norm` is the middle of
    an exported GroupNorm, else None."""
    split = g.parent(norm, 0, "Reshape")
    back = g.only_child(norm, "Reshape")
    scale = g.only_child(back, "Mul") if back is not None else None
    shift = g.only_child(scale, "Add") if scale is not None else None
    if None in (split, shift):
        return None
    shape = g.constant_value(split.input[1])
    gamma, beta = g.constant_value(scale.input[1]), g.constant_value(shift.input[1])
    if shape is None or gamma is None or beta is None or len(shape) != 3:
        return None
    epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    nodes = (split, norm, back, scale, shift)
    return nodes, split.input[0], shift.output[0], int(shape[1]), gamma, beta, epsilon


def _reductions(name: str, x: str, y: str, groups: int, gamma, beta, epsilon, rank: int, opset):
    """The nodes and initializers that compute GroupNorm(x) into y (see the module's doc), in
    the default domain's `opset`."""
    channels = int(np.asarray(gamma).size)
    ones = [1] * (rank - 2)
    constants = {
        "gamma": np.asarray(gamma, np.float32).reshape(1, channels, *ones),
        "beta": np.asarray(beta, np.float32).reshape(1, channels, *ones),
        "epsilon": np.array(epsilon, np.float32),
        "grouped": np.array([0, groups, channels // groups], np.int64),
        "spread": np.array([1, groups, channels // groups], np.int64),
        "per_channel": np.array([0, channels, *ones], np.int64),
        "spatial": np.arange(2, rank, dtype=np.int64),
        "group_axis": np.array([2], np.int64),
    }
    initializers = [numpy_helper.from_array(v, f"{name}/{k}") for k, v in constants.items()]

    def mean(value: str, out: str, axes: str):
        if opset >= 18:  # (axes became an input)
            return node("ReduceMean", [value, axes], out, keepdims=1)
        return node("ReduceMean", [value], out, axes=constants[axes].tolist(), keepdims=1)

    def node(op: str, inputs: list[str], output: str, **attributes):
        full = [i if i == x else f"{name}/{i}" for i in inputs]
        return helper.make_node(op, full, [output if output == y else f"{name}/{output}"],
                                name=f"{name}/{output}", **attributes)  # fmt: skip

    def group_mean(value: str, out: str) -> list:
        return [
            node("Reshape", [value, "grouped"], f"{out}_grouped"),
            mean(f"{out}_grouped", f"{out}_group", "group_axis"),
            node("Expand", [f"{out}_group", "spread"], f"{out}_spread"),
            node("Reshape", [f"{out}_spread", "per_channel"], out),
        ]

    nodes = [
        mean(x, "channel_mean", "spatial"),
        *group_mean("channel_mean", "mean"),
        node("Sub", [x, "mean"], "centred"),
        node("Mul", ["centred", "centred"], "squared"),
        mean("squared", "channel_variance", "spatial"),
        *group_mean("channel_variance", "variance"),
        node("Add", ["variance", "epsilon"], "variance_eps"),
        node("Sqrt", ["variance_eps"], "deviation"),
        node("Div", ["gamma", "deviation"], "scale"),
        node("Mul", ["mean", "scale"], "mean_scaled"),
        node("Sub", ["beta", "mean_scaled"], "shift"),
        node("Mul", [x, "scale"], "scaled"),
        node("Add", ["scaled", "shift"], y),
    ]
    return nodes, initializers


def reduce_group_norms(model: onnx.ModelProto, base_dir="") -> int:
    """Rewrite every exported GroupNorm of `model` (its external data in `base_dir`) whose
    input's rank is known (see the module's doc); return how many were rewritten."""
    g, ranks = GraphIndex(model.graph, base_dir), _ranks(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    replaced, remove, initializers = {}, set(), []
    for norm in [n for n in model.graph.node if n.op_type == "InstanceNormalization"]:
        found = _group_norm(g, norm)
        if found is None or ranks.get(found[1], 0) < 3:
            continue
        chain, x, y, groups, gamma, beta, epsilon = found
        name = f"{norm.name.rsplit('/', 1)[0]}/{SCOPE}"
        args = (name, x, y, groups, gamma, beta, epsilon, ranks[x], opset)
        nodes, constants = _reductions(*args)
        replaced[id(chain[-1])] = nodes
        remove.update(id(n) for n in chain)
        initializers += constants
    if not replaced:
        return 0
    # Each rewrite takes the place of its chain's last node: x is computed before it and y
    # used after it, so the graph stays topologically sorted.
    nodes = []
    for n in model.graph.node:
        if id(n) in replaced:
            nodes += replaced[id(n)]
        elif id(n) not in remove:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    drop_dead_nodes(model.graph)  # the Shape nodes that fed the chains' second Reshapes
    drop_unused_initializers(model.graph)  # the chains' scales and, before opset 18, the axes
    return len(replaced)
