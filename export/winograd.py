"""Rewrite 3x3 convolutions into Winograd F(4x4, 3x3) form for ONNX Runtime on the CPU.

A 3x3 convolution computes each 4x4 block of its output from a 6x6 tile of its input. Winograd's
F(4x4, 3x3) transforms the tile (V = B^T d B) and the filter (U = G g G^T) so that the block is
A^T [sum over input channels of U * V] A: 36 products per tile and channel pair where the direct
convolution makes 144, so the channel-mixing work, one batched matrix product over the 36
positions, is a quarter of the convolution's. The same sums are computed in another order, so the
result matches the convolution to rounding (about 1e-5 relative per layer, measured).

In ONNX operators, for an input [N, C, H, W] and a filter [O, C, 3, 3]:
    x -> Conv(6x1 rows of B^T, stride 4 down, group C)          [N, 6C, Th, W]
      -> Conv(1x6 rows of B^T, stride 4 across, group 6C)       [N, 36C, Th, Tw]
      -> Reshape [N, C, 36, T] -> Transpose                      [N, 36, C, T]
      -> MatMul(U [36, O, C])                                    [N, 36, O, T]
      -> Transpose [N, O, 36, T] -> Reshape                      [N, 36*O, Th, Tw]
      -> ConvTranspose(4x4 blocks of A^T..A, stride 4, group O, the bias) [N, O, 4Th, 4Tw]
      -> Slice [N, O, H, W]
with Th = ceil(H / 4): the input is padded by 1 above and 4 below (and across), so the last
tile reads zeros past the edge, and the extra output rows are cut off. U is computed in the graph
from the original filter by one Einsum (ONNX Runtime folds it once, at load: 2.4 s and 1.0 GiB
at peak for sd15's VAE decoder, against 1.1 s and 0.6 GiB for the standard graph), so the file
keeps the same weights; in memory a converted filter takes 4x its size.

Measured on a 2-core AVX2 EPYC (ONNX Runtime 1.32, one convolution, 4 runs each): 1.2x faster
at 128 channels on 512x512, 2.3x at 256 on 256x256, 2.4x at 512 on 128x128, 2.1x at 640 on
32x32; slower at 1280 channels on 8x8 (the transformed filter dominates). OpenVINO runs the
rewritten form slower than its own convolution, so only ONNX Runtime's CPU graph gets it.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TILE = 4  # output block side
SPAN = TILE + 2  # input tile side
MIN_CHANNELS = 128  # both sides: below this the transforms cost more than the products save
# The transformed filter takes 4x the memory of the original, so wide layers stay as they are.
MAX_FILTER_CHANNELS = 640 * 640  # output x input channels

B_T = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
A_T = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=np.float64,
)


def _attribute(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def convertible(node, initializers: dict) -> bool:
    """Whether `node` is a 3x3, stride 1, 'same'-padded, ungrouped fp32 Conv over a constant
    filter with at least MIN_CHANNELS on each side."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return False
    weight = initializers.get(node.input[1])
    if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 4:
        return False
    out_channels, in_channels, kh, kw = weight.dims
    if (kh, kw) != (3, 3) or min(out_channels, in_channels) < MIN_CHANNELS:
        return False
    if out_channels * in_channels > MAX_FILTER_CHANNELS:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
        return False
    return (
        _attribute(node, "group", 1) == 1
        and list(_attribute(node, "strides", [1, 1])) == [1, 1]
        and list(_attribute(node, "dilations", [1, 1])) == [1, 1]
        and list(_attribute(node, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
        and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def filter_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the filters of the Conv nodes rewrite_convolutions would replace."""
    initializers = {i.name: i for i in model.graph.initializer}
    return sum(
        4 * int(np.prod(initializers[node.input[1]].dims))
        for node in model.graph.node
        if convertible(node, initializers)
    )


def rewrite_convolutions(model: onnx.ModelProto) -> int:
    """Replace every convertible Conv of `model`'s main graph by its Winograd form, in place;
    returns how many were replaced. The filters' initializers are left as they are."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    constants = _Constants(graph)
    rewritten = []
    count = 0
    for node in graph.node:
        if not convertible(node, initializers):
            rewritten.append(node)
            continue
        out_channels, in_channels = initializers[node.input[1]].dims[:2]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is None:
            bias = constants.add(f"zeros_{out_channels}", np.zeros(out_channels, np.float32))
        rewritten.extend(
            _winograd_nodes(
                f"{node.output[0]}/winograd",  # (outputs are unique; node names need not be)
                node.input[0],
                node.input[1],
                bias,
                node.output[0],
                in_channels,
                out_channels,
                constants,
            )
        )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(rewritten)
        graph.initializer.extend(constants.new)
    return count


class _Constants:
    """The small constant tensors the rewrite shares between layers, added once each."""

    def __init__(self, graph):
        self.taken = {i.name for i in graph.initializer}
        self.new = []

    def add(self, name: str, value: np.ndarray) -> str:
        full = f"winograd/{name}"
        if full not in self.taken:
            self.taken.add(full)
            self.new.append(numpy_helper.from_array(value, full))
        return full


def _winograd_nodes(prefix, x, weight, bias, y, in_channels, out_channels, constants):
    """The nodes computing Conv(x, weight, bias) -> y by F(4x4, 3x3); see the module's doc."""
    c, o, k = in_channels, out_channels, SPAN * SPAN
    const = constants.add
    rows = B_T.reshape(SPAN, 1, SPAN, 1).astype(np.float32)
    cols = B_T.reshape(SPAN, 1, 1, SPAN).astype(np.float32)
    filter_transform = np.kron(G, G).reshape(k, 3, 3).astype(np.float32)
    blocks = np.einsum("pi,qj->ijpq", A_T, A_T).reshape(k, 1, TILE, TILE).astype(np.float32)

    def i64(*values):
        return const("i64_" + "_".join(str(v) for v in values), np.array(values, np.int64))

    def name(part):
        return f"{prefix}/{part}"

    def n(op, inputs, outputs, **attributes):
        return helper.make_node(
            op, inputs, outputs, name=name(outputs[0].split("/")[-1]), **attributes
        )

    return [
        # U = G g G^T for every filter, as [36, O, C] (one node: folding it holds no copies)
        n(
            "Einsum",
            [const("filter_transform", filter_transform), weight],
            [name("u")],
            equation="kij,ocij->koc",
        ),
        # V = B^T d B for every tile, rows then columns
        n("Tile", [const("rows", rows), i64(c, 1, 1, 1)], [name("rows")]),
        n("Tile", [const("cols", cols), i64(c * SPAN, 1, 1, 1)], [name("cols")]),
        n(
            "Conv",
            [x, name("rows")],
            [name("v_rows")],
            group=c,
            strides=[TILE, 1],
            pads=[1, 0, TILE, 0],
        ),
        n(
            "Conv",
            [name("v_rows"), name("cols")],
            [name("v")],
            group=c * SPAN,
            strides=[1, TILE],
            pads=[0, 1, 0, TILE],
        ),
        n("Reshape", [name("v"), i64(0, c, k, -1)], [name("v4")]),
        n("Transpose", [name("v4")], [name("vt")], perm=[0, 2, 1, 3]),
        # M = U V for each of the 36 positions
        n("MatMul", [name("u"), name("vt")], [name("m")]),
        n("Transpose", [name("m")], [name("mt")], perm=[0, 2, 1, 3]),
        n("Shape", [name("v")], [name("v_shape")]),
        n("Slice", [name("v_shape"), i64(2), i64(4), i64(0)], [name("tiles")]),
        n("Concat", [i64(0, o * k), name("tiles")], [name("blocks_shape")], axis=0),
        n("Reshape", [name("mt"), name("blocks_shape")], [name("mb")]),
        # Y = A^T M A for every block, with the bias; then cut to the input's size
        n("Tile", [const("blocks", blocks), i64(o, 1, 1, 1)], [name("blocks")]),
        n(
            "ConvTranspose",
            [name("mb"), name("blocks"), bias],
            [name("y_tiles")],
            group=o,
            strides=[TILE, TILE],
        ),
        n("Shape", [x], [name("x_shape")]),
        n("Slice", [name("x_shape"), i64(2), i64(4), i64(0)], [name("size")]),
        helper.make_node(
            "Slice", [name("y_tiles"), i64(0, 0), name("size"), i64(2, 3)], [y], name=name("crop")
        ),
    ]
