"""A nearest-neighbour 2x upsampling read by a 3x3 convolution, rewritten as four 2x2
convolutions of the image before upsampling, one per output phase, interleaved by DepthToSpace.

Upsampled, each pixel is repeated in a 2x2 block, so an output pixel at an even row reads input
rows i-1, i, i (the kernel's rows 0, 1+2 summed) and one at an odd row reads rows i, i, i+1
(rows 0+1, 2): per phase, a 2x2 kernel with the 3x3 kernel's rows and columns summed so, its
zero padding on the side the phase reads past. The same sums in another order, exact up to
rounding; 4/9 of the products. Every Upsample2D of diffusers' VAE decoders and UNets is this
pattern; their convolutions after upsampling are 28 % of sd15's VAE decoder's products at 512
and 10 % of its UNet's.

A UNet's upsamplings go to its skip connections' sizes, known at run time: twice the input's,
or one less where a skip's side is odd (its downsampling rounded up). That upsampling is the
doubled image without its last row (or column), and the convolution's zero padding then falls
where the doubled image's last row was: the phases, cropped to the skip's size, differ from the
convolution on that last row (the kernel's bottom row applied to the source's last row, once
doubled along the columns) and that last column. Those differences are computed from the
source's last row and column alone and taken off where the skip is odd (times 0 where it is
even): the same sums in arithmetic at every size, rounded otherwise on those edges. A size that
is neither (no diffusers UNet makes one) makes the output NaN, not wrong.
"""

import numpy as np

# The 3x3 kernel's rows (or columns) summed into the two taps of output phase 0 and 1.
PHASE_TAPS = (
    np.array([[1, 0, 0], [0, 1, 1]], np.float32),
    np.array([[1, 1, 0], [0, 0, 1]], np.float32),
)


def fold_upsampling(model) -> int:
    """Rewrite each 3x3 convolution of `model` that reads a nearest 2x upsampling of its input
    (doubled by its static shapes or constant scales, or to sizes given at run time, a skip
    connection's) into four 2x2 convolutions of the input, one per output phase, interleaved
    (and cropped to the given sizes); how many convolutions were rewritten. Convolutions whose
    weights are not fp32 constants (compressed: int8, fp16) are left as they are."""
    count = 0
    for upsample in model.get_ordered_ops():
        doubles = _doubles(upsample)
        sizes = None if doubles else _skip_sizes(upsample)
        if not doubles and sizes is None:
            continue
        x = upsample.input_value(0)
        for target in list(upsample.output(0).get_target_inputs()):
            conv = target.get_node()
            weights = _three_by_three(conv)
            if weights is None:
                continue
            replaced, bias = _bias_of(conv)
            name = conv.get_friendly_name()
            output = _phases(x, weights, bias, name)
            if sizes is not None:
                output = _cropped(output, x, sizes, weights, name)
            replaced.output(0).replace(output.output(0))
            count += 1
    return count


def _phases(x, weights: np.ndarray, bias: np.ndarray | None, name: str):
    """The 3x3 convolution `weights` (+ `bias`) of `x` doubled, as four phase convolutions of
    `x`, interleaved."""
    from openvino import opset13 as ops

    phases = []
    for a in (0, 1):
        for b in (0, 1):
            kernel = np.einsum("ry,oiyx,cx->oirc", PHASE_TAPS[a], weights, PHASE_TAPS[b])
            kernel = ops.constant(np.ascontiguousarray(kernel))
            phase = ops.convolution(x, kernel, [1, 1], [1 - a, 1 - b], [a, b], [1, 1])
            phase.set_friendly_name(f"{name}/phase_{a}{b}")
            if bias is not None:
                phase = ops.add(phase, ops.constant(bias))
                phase.set_friendly_name(f"{name}/phase_{a}{b}/bias")
            phases.append(phase)
    interleaved = ops.depth_to_space(ops.concat(phases, 1), "blocks_first", 2)
    interleaved.set_friendly_name(f"{name}/phases")
    return interleaved


def _cropped(phases, x, sizes, weights: np.ndarray, name: str):
    """The phases of `x` doubled, cropped to `sizes` ([N, C, H, W], each side twice x's or one
    less), with the differences at an odd side's last row and column taken off: the 3x3
    convolution of the upsampling to `sizes`. NaN where `sizes` is neither."""
    from openvino import opset13 as ops

    def part(tensor, start, stop, axis):
        return ops.slice(tensor, _i64([start]), _i64([stop]), _i64([1]), _i64([axis]))

    def kernel(rows, columns):
        return ops.constant(np.ascontiguousarray(weights[:, :, rows, columns]))

    def doubled(tensor, axis):
        scales = ops.constant(np.array([2.0], np.float32))
        return ops.interpolate(tensor, scales, "nearest", "scales", axes=_i64([axis]),
                               coordinate_transformation_mode="asymmetric",
                               nearest_mode="floor")  # fmt: skip

    end = np.iinfo(np.int64).max
    doubled_sizes = ops.multiply(ops.shape_of(x, "i64"), _i64([1, 1, 2, 2]))
    short = ops.subtract(doubled_sizes, sizes)  # [0, 0, odd rows, odd columns] where it holds
    odd = ops.convert(short, "f32")
    odd_rows, odd_columns = (ops.gather(odd, _i64(axis), _i64(0)) for axis in (2, 3))
    height, width = (ops.gather(sizes, _i64([axis]), _i64(0)) for axis in (2, 3))
    # The doubled source's last row through the kernel's bottom row, and its last column
    # through its right column: what the phases add where an odd side's padding should be.
    last_row, last_column = part(x, -1, end, 2), part(x, -1, end, 3)
    row = ops.convolution(doubled(last_row, 3), kernel(slice(2, 3), slice(None)),
                          [1, 1], [0, 1], [0, 1], [1, 1])  # fmt: skip
    column = ops.convolution(doubled(last_column, 2), kernel(slice(None), slice(2, 3)),
                             [1, 1], [1, 0], [1, 0], [1, 1])  # fmt: skip
    corner = ops.convolution(part(last_row, -1, end, 3), kernel(slice(2, 3), slice(2, 3)),
                             [1, 1], [0, 0], [0, 0], [1, 1])  # fmt: skip
    for node, edge in ((row, "last_row"), (column, "last_column"), (corner, "corner")):
        node.set_friendly_name(f"{name}/phases/{edge}")
    row = ops.multiply(ops.slice(row, _i64([0]), width, _i64([1]), _i64([3])), odd_rows)
    column = ops.slice(column, _i64([0]), height, _i64([1]), _i64([2]))
    column = ops.concat([part(column, 0, -1, 2), ops.subtract(
        part(column, -1, end, 2), ops.multiply(corner, odd_rows))], 2)  # fmt: skip
    column = ops.multiply(column, odd_columns)
    stop = ops.gather(sizes, _i64([2, 3]), _i64(0))
    output = ops.slice(phases, _i64([0, 0]), stop, _i64([1, 1]), _i64([2, 3]))
    output = ops.concat([part(output, 0, -1, 2), ops.subtract(part(output, -1, end, 2), row)], 2)
    output = ops.concat([part(output, 0, -1, 3), ops.subtract(part(output, -1, end, 3), column)], 3)
    # 0 where each side is twice the source's or one less and the rest unchanged, else NaN
    wrong = ops.multiply(short, ops.subtract(short, _i64([1])))
    wrong = ops.add(ops.multiply(wrong, wrong), ops.multiply(short, _i64([1, 1, 0, 0])))
    guard = ops.sqrt(ops.negative(ops.convert(ops.reduce_sum(wrong, _i64([0])), "f32")))
    output = ops.add(output, guard)
    output.set_friendly_name(f"{name}/phases/cropped")
    return output


def _i64(values) -> object:
    from openvino import opset13 as ops

    return ops.constant(np.array(values, np.int64))


def _skip_sizes(node):
    """The sizes `node` upsamples to, as a 4-vector of int64 ([N, C, H, W]), where it is a
    nearest-neighbour upsampling (as _doubles) to sizes given at run time, or given and each
    side twice the input's or one less; else None."""
    from openvino import opset13 as ops

    if not _nearest_floor(node) or node.get_attributes().get("shape_calculation_mode") != "sizes":
        return None
    source, result = node.get_input_partial_shape(0), node.get_output_partial_shape(0)
    if source.is_static and result.is_static:
        (n, c, h, w), out = source.to_shape(), list(result.to_shape())
        if (
            out[:2] != [n, c]
            or out[2] not in (2 * h - 1, 2 * h)
            or out[3] not in (2 * w - 1, 2 * w)
        ):
            return None
    elif _constant(node, 1) is not None:  # one size for inputs of any size: no skip's
        return None
    axes_at = 2 if node.get_type_info().version_id == "opset11" else 3
    given = node.input_value(1)
    if given.get_partial_shape().rank.get_length() != 1:
        return None
    if node.get_input_size() <= axes_at:  # a size for every axis
        return ops.convert(given, "i64") if given.get_partial_shape() == [4] else None
    axes = _constant(node, axes_at)
    if axes is None or sorted(int(a) % 4 for a in axes.reshape(-1)) != [2, 3]:
        return None
    full = ops.shape_of(node.input_value(0), "i64")
    return ops.scatter_update(full, _i64(axes.reshape(-1) % 4), ops.convert(given, "i64"), _i64(0))


def _doubles(node) -> bool:
    """Whether `node` is a nearest-neighbour upsampling of a 4-D image to twice its height and
    width, each output pixel the input's at (row // 2, column // 2), known to be so without
    running it (a UNet's upsampling to a skip connection's size, known at run time, is one row
    or column less at odd sizes: _skip_sizes)."""
    if not _nearest_floor(node):
        return False
    attributes = node.get_attributes()
    source, result = node.get_input_partial_shape(0), node.get_output_partial_shape(0)
    # (in scales mode the source pixel is floor(i / scale): doubled sizes need a scale of 2)
    if attributes.get("shape_calculation_mode") == "scales" and _scales(node) != {2: 2, 3: 2}:
        return False
    if source.is_static and result.is_static:
        (n, c, h, w), out = source.to_shape(), result.to_shape()
        return list(out) == [n, c, 2 * h, 2 * w]
    return attributes.get("shape_calculation_mode") == "scales"


def _nearest_floor(node) -> bool:
    """Whether `node` is a nearest-neighbour upsampling of a 4-D image, each output pixel the
    input's at (row // scale, column // scale)."""
    if node.get_type_name() != "Interpolate":
        return False
    attributes = node.get_attributes()
    if (
        attributes.get("mode") != "nearest"
        or attributes.get("coordinate_transformation_mode") != "asymmetric"
        or attributes.get("nearest_mode") != "floor"
        or attributes.get("antialias")
        or any(attributes.get("pads_begin", [])) or any(attributes.get("pads_end", []))
    ):  # fmt: skip
        return False
    rank = node.get_input_partial_shape(0).rank
    return rank.is_static and rank.get_length() == 4


def _scales(node) -> dict[int, float] | None:
    """The constant scale of each axis `node` (an Interpolate in scales mode) scales by other
    than 1, by axis; None where they are not constants."""
    version = node.get_type_info().version_id
    scales_at, axes_at = (1, 2) if version == "opset11" else (2, 3)
    if node.get_input_size() <= scales_at:
        return None
    scales = _constant(node, scales_at)
    axes = _constant(node, axes_at) if node.get_input_size() > axes_at else np.arange(4)
    if scales is None or axes is None or scales.size != axes.size:
        return None
    pairs = zip(axes.reshape(-1), scales.reshape(-1), strict=True)
    return {int(axis) % 4: float(scale) for axis, scale in pairs if scale != 1}


def _constant(node, index: int) -> np.ndarray | None:
    """The value of `node`'s input `index` where it is a constant, else None."""
    source = node.input_value(index).get_node()
    return source.get_data() if source.get_type_name() == "Constant" else None


def _three_by_three(conv) -> np.ndarray | None:
    """The fp32 weights of `conv` where it is a 3x3 convolution with stride 1, no dilation,
    and a padding of 1 on every side; else None."""
    if conv.get_type_name() != "Convolution":
        return None
    attributes = conv.get_attributes()
    weights = _constant(conv, 1)
    if (
        weights is None
        or weights.dtype != np.float32
        or weights.shape[2:] != (3, 3)
        or attributes["strides"] != [1, 1]
        or attributes["dilations"] != [1, 1]
        or attributes["pads_begin"] != [1, 1]
        or attributes["pads_end"] != [1, 1]
        or attributes["auto_pad"] not in ("explicit", "notset")
    ):
        return None
    return weights


def _bias_of(conv) -> tuple[object, np.ndarray | None]:
    """(the node whose output the phases replace, the bias they add): the Add of a
    per-channel constant that alone reads `conv`, with that constant; else `conv` and None."""
    readers = list(conv.output(0).get_target_inputs())
    if len(readers) != 1 or readers[0].get_node().get_type_name() != "Add":
        return conv, None
    add = readers[0].get_node()
    bias = _constant(add, 1 - readers[0].get_index())
    channels = conv.get_output_partial_shape(0)[1]
    if (
        bias is None
        or bias.ndim != 4
        or bias.shape[0] != 1 or bias.shape[2:] != (1, 1)
        or not channels.is_static or bias.shape[1] != channels.get_length()
        or add.get_output_element_type(0) != conv.get_output_element_type(0)
    ):  # fmt: skip
        return conv, None
    return add, bias
