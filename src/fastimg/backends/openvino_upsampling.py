"""A nearest-neighbour 2x upsampling read by a 3x3 convolution, rewritten as four 2x2
convolutions of the image before upsampling, one per output phase, interleaved by DepthToSpace.

Upsampled, each pixel is repeated in a 2x2 block, so an output pixel at an even row reads input
rows i-1, i, i (the kernel's rows 0, 1+2 summed) and one at an odd row reads rows i, i, i+1
(rows 0+1, 2): per phase, a 2x2 kernel with the 3x3 kernel's rows and columns summed so, its
zero padding on the side the phase reads past. The same sums in another order, exact up to
rounding; 4/9 of the products. Every Upsample2D of diffusers' VAE decoders and UNets is this
pattern; their convolutions after upsampling are 28 % of sd15's VAE decoder's products at 512
and 10 % of its UNet's.
"""

import numpy as np

# The 3x3 kernel's rows (or columns) summed into the two taps of output phase 0 and 1.
PHASE_TAPS = (
    np.array([[1, 0, 0], [0, 1, 1]], np.float32),
    np.array([[1, 1, 0], [0, 0, 1]], np.float32),
)


def fold_upsampling(model) -> int:
    """Rewrite each 3x3 convolution of `model` that reads a nearest 2x upsampling of its input
    (its shapes static, or doubled by constant scales) into four 2x2 convolutions of the input,
    one per output phase, interleaved; how many convolutions were rewritten. Convolutions
    whose weights are not fp32 constants (compressed: int8, fp16) are left as they are."""
    from openvino import opset13 as ops

    count = 0
    for upsample in model.get_ordered_ops():
        if not _doubles(upsample):
            continue
        x = upsample.input_value(0)
        for target in list(upsample.output(0).get_target_inputs()):
            conv = target.get_node()
            weights = _three_by_three(conv)
            if weights is None:
                continue
            replaced, bias = _bias_of(conv)
            name = conv.get_friendly_name()
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
            replaced.output(0).replace(interleaved.output(0))
            count += 1
    return count


def _doubles(node) -> bool:
    """Whether `node` is a nearest-neighbour upsampling of a 4-D image to twice its height and
    width, each output pixel the input's at (row // 2, column // 2). (A UNet's upsampling to an
    odd skip connection's size, one row less, is not: the convolution's zero padding would
    then fall inside the doubled image.)"""
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
    source, result = node.get_input_partial_shape(0), node.get_output_partial_shape(0)
    if not source.rank.is_static or source.rank.get_length() != 4:
        return False
    # (in scales mode the source pixel is floor(i / scale): doubled sizes need a scale of 2)
    if attributes.get("shape_calculation_mode") == "scales" and _scales(node) != {2: 2, 3: 2}:
        return False
    if source.is_static and result.is_static:
        (n, c, h, w), out = source.to_shape(), result.to_shape()
        return list(out) == [n, c, 2 * h, 2 * w]
    return attributes.get("shape_calculation_mode") == "scales"


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
