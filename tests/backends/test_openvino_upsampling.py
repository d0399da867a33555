import numpy as np
import pytest

from tests.backends.openvino_graphs import compiled_layers, run_f32

ov = pytest.importorskip("openvino")

RNG = np.random.default_rng(0)
WEIGHTS = RNG.standard_normal((6, 5, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)


def _upsampled(shape, weights=WEIGHTS, bias=BIAS, how="scales", factor=2.0, mode="nearest",
               stride=1, pads=1, extra_reader=False):  # fmt: skip
    """diffusers' Upsample2D as exported: a nearest 2x upsampling, then a 3x3 convolution and
    its bias."""
    from openvino import opset13 as ops

    x = ops.parameter(shape, np.float32)
    if how == "scales":
        target = ops.constant(np.array([1, 1, factor, factor], np.float32))
    else:  # sizes, from the input's own shape
        target = ops.multiply(ops.shape_of(x), ops.constant(np.array([1, 1, 2, 2], np.int64)))
    up = ops.interpolate(x, target, mode, how, coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")  # fmt: skip
    filters = weights if isinstance(weights, ov.Node) else ops.constant(weights)
    conv = ops.convolution(up, filters, [stride] * 2, [pads] * 2, [pads] * 2, [1, 1])
    outputs = [ops.add(conv, ops.constant(bias)) if bias is not None else conv]
    if extra_reader:
        outputs.append(ops.relu(up))
    return ov.Model(outputs, [x])


def _kinds(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ordered_ops()]


@pytest.mark.parametrize("bias", [BIAS, None])
def test_an_upsampled_convolution_runs_per_phase_with_the_same_output(bias):
    from fastimg.backends.openvino_upsampling import fold_upsampling

    x = RNG.standard_normal((2, 5, 7, 4)).astype(np.float32)
    expected = run_f32(_upsampled(list(x.shape), bias=bias), x)
    model = _upsampled(list(x.shape), bias=bias)
    assert fold_upsampling(model) == 1
    kinds = _kinds(model)
    assert "Interpolate" not in kinds and kinds.count("DepthToSpace") == 1
    kernels = [
        op.input_value(1).get_partial_shape().to_shape()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution"
    ]
    assert [list(k) for k in kernels] == [[6, 5, 2, 2]] * 4
    # the bias is added by each phase's convolution (fused there), not after interleaving
    assert kinds.count("Add") == (4 if bias is not None else 0)
    np.testing.assert_allclose(run_f32(model, x)[0], expected[0], rtol=1e-5, atol=1e-5)


def test_doubling_scales_are_rewritten_for_every_size_a_dynamic_graph_takes():
    from fastimg.backends.openvino_upsampling import fold_upsampling

    model = _upsampled([-1, 5, -1, -1])
    assert fold_upsampling(model) == 1
    for shape in [(1, 5, 1, 1), (2, 5, 3, 8), (1, 5, 9, 5)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        expected = run_f32(_upsampled([-1, 5, -1, -1]), x)[0]
        ours = run_f32(model, x)[0]
        assert ours.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def _to_a_skip(weights=WEIGHTS, bias=BIAS, axes: bool = False):
    """diffusers' Upsample2D in a UNet as exported: an upsampling to its skip connection's size
    (the skip an input here), a 3x3 convolution and its bias."""
    from openvino import opset13 as ops

    x = ops.parameter([-1, 5, -1, -1], np.float32)
    skip = ops.parameter([-1, 2, -1, -1], np.float32)
    spatial = ops.gather(ops.shape_of(skip), ops.constant(np.int64([2, 3])), ops.constant(0))
    if axes:
        sizes, given_axes = spatial, ops.constant(np.int64([2, 3]))
    else:
        own = ops.gather(ops.shape_of(x), ops.constant(np.int64([0, 1])), ops.constant(0))
        sizes, given_axes = ops.concat([own, spatial], 0), None
    up = ops.interpolate(x, sizes, "nearest", "sizes", axes=given_axes,
                         coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")  # fmt: skip
    conv = ops.convolution(up, ops.constant(weights), [1, 1], [1, 1], [1, 1], [1, 1])
    return ov.Model([ops.add(conv, ops.constant(bias)) if bias is not None else conv], [x, skip])


SKIPS = [((4, 3), (8, 6)), ((4, 3), (7, 6)), ((4, 3), (8, 5)), ((4, 3), (7, 5)), ((1, 2), (1, 3))]


@pytest.mark.parametrize("axes", [False, True], ids=["sizes", "axes"])
@pytest.mark.parametrize("bias", [BIAS, None], ids=["bias", "no-bias"])
def test_an_upsampling_to_a_skips_size_runs_per_phase_at_every_size_a_skip_takes(axes, bias):
    from fastimg.backends.openvino_upsampling import fold_upsampling

    model = _to_a_skip(bias=bias, axes=axes)
    assert fold_upsampling(model) == 1
    assert _kinds(model).count("DepthToSpace") == 1
    for (height, width), (rows, columns) in SKIPS:  # twice the input's side, or one less
        feeds = [RNG.standard_normal((2, 5, height, width)).astype(np.float32),
                 np.zeros((2, 2, rows, columns), np.float32)]  # fmt: skip
        (expected,) = run_f32(_to_a_skip(bias=bias, axes=axes), feeds)
        (ours,) = run_f32(model, feeds)
        assert ours.shape == expected.shape == (2, 6, rows, columns)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_an_upsampling_to_a_size_no_skip_takes_gives_nan_not_a_wrong_image():
    from fastimg.backends.openvino_upsampling import fold_upsampling

    model = _to_a_skip()
    assert fold_upsampling(model) == 1
    x = RNG.standard_normal((1, 5, 4, 3)).astype(np.float32)
    feeds = [x, np.zeros((1, 2, 6, 6), np.float32)]  # a skip of 6 rows for 4: neither 8 nor 7
    assert np.isnan(run_f32(model, feeds)[0]).all()
    assert np.isfinite(run_f32(_to_a_skip(), feeds)[0]).all()  # what the graph as read makes


def test_a_constant_size_for_inputs_of_any_size_is_left_alone():
    from openvino import opset13 as ops

    from fastimg.backends.openvino_upsampling import fold_upsampling

    x = ops.parameter([1, 5, -1, -1], np.float32)  # 16x16 from 8x8, but also from 5x5
    target = ops.constant(np.array([1, 5, 16, 16], np.int64))
    up = ops.interpolate(x, target, "nearest", "sizes",
                         coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")  # fmt: skip
    conv = ops.convolution(up, ops.constant(WEIGHTS), [1, 1], [1, 1], [1, 1], [1, 1])
    assert fold_upsampling(ov.Model([conv], [x])) == 0


def test_sizes_known_only_at_run_time_run_per_phase_and_static_doublings_simply():
    from fastimg.backends.openvino_upsampling import fold_upsampling

    dynamic = _upsampled([-1, 5, -1, -1], how="sizes")  # cropped to its run-time sizes
    assert fold_upsampling(dynamic) == 1
    x = RNG.standard_normal((1, 5, 3, 4)).astype(np.float32)
    expected = run_f32(_upsampled([-1, 5, -1, -1], how="sizes"), x)[0]
    np.testing.assert_allclose(run_f32(dynamic, x)[0], expected, rtol=1e-5, atol=1e-5)
    static = _upsampled([1, 5, 4, 4], how="sizes")  # shape inference makes it a doubling
    assert fold_upsampling(static) == 1
    assert "Slice" not in _kinds(static)  # no crop, no correction


@pytest.mark.parametrize(
    "change",
    [
        {"mode": "linear"},
        {"factor": 3.0},
        {"stride": 2},
        {"pads": 0},
        {"weights": RNG.standard_normal((6, 5, 1, 1)).astype(np.float32), "pads": 0},
    ],
    ids=["linear", "3x", "stride-2", "unpadded", "1x1"],
)
def test_what_is_not_a_nearest_doubling_read_by_a_padded_3x3_convolution_is_left_alone(change):
    from fastimg.backends.openvino_upsampling import fold_upsampling

    model = _upsampled([1, 5, 4, 4], **change)
    assert fold_upsampling(model) == 0
    assert "Interpolate" in _kinds(model)


def test_scales_that_happen_to_double_a_static_size_are_left_alone():
    from fastimg.backends.openvino_upsampling import fold_upsampling

    # 4 rows x 2.2 = 8 rows, but each reads row floor(i / 2.2), not i // 2
    model = _upsampled([1, 5, 4, 4], factor=2.2)
    assert list(model.output(0).get_partial_shape().to_shape()) == [1, 6, 8, 8]
    assert fold_upsampling(model) == 0


@pytest.mark.parametrize("axes", [None, [2, 3]])
def test_interpolate_4s_inputs_are_read_too(axes):
    from openvino import opset10
    from openvino import opset13 as ops

    from fastimg.backends.openvino_upsampling import fold_upsampling

    def graph():  # Interpolate-4: (data, sizes, scales, [axes])
        x = ops.parameter([-1, 5, -1, -1], np.float32)
        scales = [2.0, 2.0] if axes else [1.0, 1.0, 2.0, 2.0]
        up = opset10.interpolate(
            x, ops.constant(np.zeros(len(scales), np.int64)), ops.constant(np.float32(scales)),
            "nearest", "scales", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
            axes=None if axes is None else ops.constant(np.int64(axes)),
        )  # fmt: skip
        conv = ops.convolution(up, ops.constant(WEIGHTS), [1, 1], [1, 1], [1, 1], [1, 1])
        return ov.Model([conv], [x])

    model = graph()
    assert "opset4" in {op.get_type_info().version_id for op in model.get_ops()}
    assert fold_upsampling(model) == 1
    x = RNG.standard_normal((1, 5, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(run_f32(model, x)[0], run_f32(graph(), x)[0], rtol=1e-5, atol=1e-5)


def test_compressed_weights_are_left_as_they_are():
    from openvino import opset13 as ops

    from fastimg.backends.openvino_upsampling import fold_upsampling

    fp16 = ops.convert(ops.constant(WEIGHTS.astype(np.float16)), np.float32)
    assert fold_upsampling(_upsampled([1, 5, 4, 4], weights=fp16)) == 0


def test_an_upsampling_read_elsewhere_too_stays_for_that_reader():
    from fastimg.backends.openvino_upsampling import fold_upsampling

    x = RNG.standard_normal((1, 5, 3, 3)).astype(np.float32)
    expected = run_f32(_upsampled(list(x.shape), extra_reader=True), x)
    model = _upsampled(list(x.shape), extra_reader=True)
    assert fold_upsampling(model) == 1
    assert _kinds(model).count("Interpolate") == 1
    for ours, theirs in zip(run_f32(model, x), expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_tiny_vae_decoder_compiled_for_static_shapes_runs_its_upsamplings_per_phase(tiny):
    from fastimg.backends.openvino import OpenVinoSession
    from fastimg.backends.openvino_rewrites import rewrite

    path = tiny[1] / "vae_decoder" / "model.onnx"
    feeds = {"latent_sample": RNG.standard_normal((1, 4, 8, 6)).astype(np.float32)}
    model = ov.Core().read_model(str(path))
    model.reshape({"latent_sample": [1, 4, 8, 6]})
    upsamplings = sum(op.get_type_name() == "Interpolate" for op in model.get_ops())
    assert upsamplings > 0 and rewrite(model)["upsampled-convolutions"] == upsamplings
    static = OpenVinoSession(path, shapes="static", threads=1)
    (expected,) = run_f32(ov.Core().read_model(str(path)), feeds)
    np.testing.assert_allclose(static.run(feeds)["sample"], expected, rtol=1e-4, atol=1e-4)


def test_the_tiny_vae_decoder_compiled_for_dynamic_shapes_runs_its_upsamplings_per_phase(tiny):
    """Its upsamplings double by constant scales: the phases hold at every size it takes."""
    from fastimg.backends.openvino import OpenVinoSession

    path = tiny[1] / "vae_decoder" / "model.onnx"
    session = OpenVinoSession(path, threads=1)
    kinds = [kind for kind, _ in compiled_layers(session)]
    assert "Interpolate" not in kinds and "DepthToSpace" in kinds
    as_read = ov.Core().read_model(str(path))
    for height, width in [(8, 6), (5, 9), (3, 2)]:
        feeds = {"latent_sample": RNG.standard_normal((1, 4, height, width)).astype(np.float32)}
        (expected,) = run_f32(as_read, feeds)
        ours = session.run(feeds)["sample"]
        assert ours.shape == expected.shape == (1, 3, 8 * height, 8 * width)
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [None, [2, 4, 8, 8], [2, 4, 5, 7]], ids=["dynamic", "8x8", "5x7"])
def test_the_tiny_unet_runs_its_upsamplings_per_phase_for_either_shapes(tiny, shape):
    from fastimg.backends.openvino_rewrites import rewrite

    model = ov.Core().read_model(str(tiny[1] / "unet" / "model.onnx"))
    if shape is not None:
        model.reshape({"sample": shape, "encoder_hidden_states": [2, 77, 32]})
    upsamplings = sum(op.get_type_name() == "Interpolate" for op in model.get_ops())
    assert upsamplings > 0 and rewrite(model)["upsampled-convolutions"] == upsamplings


def test_the_tiny_unet_for_dynamic_shapes_runs_its_upsamplings_exact_at_odd_sizes(tiny):
    """Its upsamplings go to the skips' sizes, one less than twice at odd sizes: compiled for
    dynamic shapes, it runs them per phase, cropped, at every size."""
    from fastimg.backends.openvino import OpenVinoSession

    path = tiny[1] / "unet" / "model.onnx"
    session = OpenVinoSession(path, threads=1)
    assert "DepthToSpace" in [kind for kind, _ in compiled_layers(session)]
    for height, width in [(5, 7), (8, 8), (9, 6)]:
        feeds = {
            "sample": RNG.standard_normal((1, 4, height, width)).astype(np.float32),
            "timestep": np.array([500.0], np.float32),
            "encoder_hidden_states": RNG.standard_normal((1, 77, 32)).astype(np.float32),
        }
        (expected,) = run_f32(ov.Core().read_model(str(path)), feeds)
        ours = session.run(feeds)["out_sample"]
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("sizes", "rewritten"), [((5, 8), 1), ((5, 7), 1), ((4, 8), 0)])
def test_a_static_upsampling_to_one_less_than_twice_runs_per_phase_cropped(sizes, rewritten):
    from openvino import opset13 as ops

    from fastimg.backends.openvino_upsampling import fold_upsampling

    def graph():  # upsampled from 3x4 (a UNet's skip of 5 rows, halved to 3)
        x = ops.parameter([1, 5, 3, 4], np.float32)
        target = ops.constant(np.array([1, 5, *sizes], np.int64))
        up = ops.interpolate(x, target, "nearest", "sizes",
                             coordinate_transformation_mode="asymmetric",
                             nearest_mode="floor")  # fmt: skip
        conv = ops.convolution(up, ops.constant(WEIGHTS), [1, 1], [1, 1], [1, 1], [1, 1])
        return ov.Model([conv], [x])

    model = graph()
    # (4 rows from 3 is no skip's size: each reads row floor(i * 3 / 4), left as it is)
    assert fold_upsampling(model) == rewritten
    x = RNG.standard_normal((1, 5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run_f32(model, x)[0], run_f32(graph(), x)[0], rtol=1e-5, atol=1e-5)
