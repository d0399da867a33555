import numpy as np
import pytest

ov = pytest.importorskip("openvino")


def _geglu(weights: np.ndarray, bias: np.ndarray, transposed: bool = False):
    """diffusers' GEGLU as exported: a projection to twice the width, its halves sliced apart,
    the value times the GELU of the gate."""
    from openvino import opset13 as ops

    x = ops.parameter([2, 5, weights.shape[1] if transposed else weights.shape[0]], np.float32)
    projected = ops.add(ops.matmul(x, ops.constant(weights), False, transposed), ops.constant(bias))
    half = bias.shape[0] // 2
    value, gate = (
        ops.slice(projected, ops.constant([a]), ops.constant([b]), ops.constant([1]),
                  ops.constant([-1]))
        for a, b in ((0, half), (half, 2**62))
    )  # fmt: skip
    return ov.Model([ops.multiply(value, ops.gelu(gate, "erf"))], [x])


def _run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x)[0]


@pytest.mark.parametrize("transposed", [False, True])
def test_a_sliced_projection_becomes_one_matmul_per_slice_with_the_same_output(transposed):
    from fastimg.backends.openvino_rewrites import split_projections

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((8, 12) if not transposed else (12, 8)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    expected = _run(_geglu(weights, bias, transposed), x)

    model = _geglu(weights, bias, transposed)
    (add,) = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Add"]
    assert split_projections(model) == 1
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "Slice" not in kinds and kinds.count("MatMul") == 2
    products = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"}
    # named after the projection, so that the int8 export's per-layer errors say which
    assert products == {f"{add}/columns_0_6/MatMul", f"{add}/columns_6_12/MatMul"}
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-6, atol=1e-6)


def test_compressed_weights_are_left_as_they_are():
    from openvino import opset13 as ops

    from fastimg.backends.openvino_rewrites import split_projections

    weights = np.ones((8, 12), np.float16)
    x = ops.parameter([2, 5, 8], np.float32)
    decompressed = ops.convert(ops.constant(weights), np.float32)  # fp16 weights
    projected = ops.add(
        ops.matmul(x, decompressed, False, False), ops.constant(np.ones(12, np.float32))
    )
    halves = [ops.slice(projected, ops.constant([a]), ops.constant([b]), ops.constant([1]),
                        ops.constant([-1])) for a, b in ((0, 6), (6, 12))]  # fmt: skip
    model = ov.Model([ops.multiply(*halves)], [x])
    assert split_projections(model) == 0
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("Slice") == 2


def test_a_projection_read_whole_elsewhere_is_left_as_it_is():
    from openvino import opset13 as ops

    from fastimg.backends.openvino_rewrites import split_projections

    x = ops.parameter([2, 5, 8], np.float32)
    projected = ops.add(ops.matmul(x, ops.constant(np.ones((8, 12), np.float32)), False, False),
                        ops.constant(np.ones(12, np.float32)))  # fmt: skip
    half = ops.slice(projected, ops.constant([0]), ops.constant([6]), ops.constant([1]),
                     ops.constant([-1]))  # fmt: skip
    model = ov.Model([half, ops.relu(projected)], [x])
    assert split_projections(model) == 0


def test_the_tiny_unet_compiled_for_static_shapes_runs_its_projections_split(tiny, tmp_path):
    from fastimg.backends.openvino import OpenVinoSession

    path = tiny[1] / "unet" / "model.onnx"
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }
    model = ov.Core().read_model(str(path))
    model.reshape({name: list(array.shape) for name, array in feeds.items()})
    from fastimg.backends.openvino_rewrites import split_projections

    assert split_projections(model) > 0  # the tiny UNet's GEGLUs
    static = OpenVinoSession(path, shapes="static", threads=1)
    dynamic = OpenVinoSession(path, threads=1)
    ours, theirs = static.run(feeds)["out_sample"], dynamic.run(feeds)["out_sample"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_static_compiled_cache_is_keyed_by_the_rewrites(tiny, tmp_path, monkeypatch):
    import json
    import shutil

    from fastimg.backends import component_options, openvino_rewrites
    from fastimg.engine_folder.manifest import load_manifest

    engines = shutil.copytree(
        tiny[1], tmp_path / "engines", ignore=shutil.ignore_patterns("openvino_cache")
    )
    manifest = load_manifest(engines)
    shapes = {"sample": [1, 4, 8, 8]}
    folder = component_options("openvino", manifest, "unet", "fp32").static_cache(shapes)
    assert json.loads((folder / "key.json").read_text())["options"]["rewrites"] == list(
        openvino_rewrites.REWRITES
    )
    monkeypatch.setattr(openvino_rewrites, "REWRITES", ("another rewrite",))
    other = component_options("openvino", manifest, "unet", "fp32").static_cache(shapes)
    assert other != folder  # blobs compiled before a rewrite changed are never imported


def _attention(heads: int, dim: int, tokens: int = 6, width: int = 5, bias: bool = False):
    """Self-attention as torch exports scaled_dot_product_attention: the query, key and value
    projected, reshaped to [1, -1, heads, dim], transposed, the query and key each scaled by the
    square root of the scale; random weights."""
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, tokens, width], np.float32)
    shape = ops.constant(np.array([1, -1, heads, dim], np.int64))
    root = ops.constant(np.array([dim**-0.25], np.float32))

    def side(order, scaled=True):
        projected = ops.matmul(x, ops.constant(rng.standard_normal((width, heads * dim)).astype(
            np.float32)), False, False)  # fmt: skip
        if bias:
            projected = ops.add(projected, ops.constant(
                rng.standard_normal(heads * dim).astype(np.float32)))  # fmt: skip
        moved = ops.transpose(ops.reshape(projected, shape, False), ops.constant(order))
        return ops.multiply(moved, root) if scaled else moved

    scores = ops.softmax(ops.matmul(side([0, 2, 1, 3]), side([0, 2, 3, 1]), False, False), -1)
    out = ops.matmul(scores, side([0, 2, 1, 3], scaled=False), False, False)
    return ov.Model([out], [x])


@pytest.mark.parametrize("bias", [False, True])
def test_attention_heads_padded_with_zeros_give_the_same_attention(bias):
    from fastimg.backends.openvino_rewrites import pad_attention_heads

    x = np.random.default_rng(1).standard_normal((1, 6, 5)).astype(np.float32)
    expected = _run(_attention(2, 3, bias=bias), x)
    model = _attention(2, 3, bias=bias)
    assert pad_attention_heads(model, width=8) == 1
    shapes = [list(op.get_output_partial_shape(0).to_shape()) for op in model.get_ordered_ops()
              if op.get_type_name() == "Transpose"]  # fmt: skip
    # the query's and key's heads 8 wide, the value's as they were
    assert sorted(shapes) == [[1, 2, 6, 3], [1, 2, 6, 8], [1, 2, 8, 6]]
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-6)


def test_heads_as_wide_as_asked_are_left_as_they_are():
    from fastimg.backends.openvino_rewrites import pad_attention_heads

    assert pad_attention_heads(_attention(2, 8), width=8) == 0
    model = _attention(2, 3)
    assert pad_attention_heads(model, width=4) == 1
    assert pad_attention_heads(model, width=4) == 0  # (its heads are 4 wide now)


def test_the_tiny_unet_with_its_heads_padded_gives_the_same_output(tiny):
    from fastimg.backends.openvino_rewrites import pad_attention_heads

    path = tiny[1] / "unet" / "model.onnx"
    feeds = {
        "sample": np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": np.random.default_rng(1).standard_normal((1, 77, 32)).astype(
            np.float32),
    }  # fmt: skip
    outputs = []
    for pad in (False, True):
        model = ov.Core().read_model(str(path))
        model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        if pad:
            assert pad_attention_heads(model, width=16) > 0
        outputs.append(_run(model, feeds))
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
