import numpy as np
import pytest

from tests.backends.openvino_graphs import compiled_layers, run_f32

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


@pytest.mark.parametrize("transposed", [False, True])
def test_a_sliced_projection_becomes_one_matmul_per_slice_with_the_same_output(transposed):
    from fastimg.backends.openvino_rewrites import split_projections

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((8, 12) if not transposed else (12, 8)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    expected = run_f32(_geglu(weights, bias, transposed), x)[0]

    model = _geglu(weights, bias, transposed)
    (add,) = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Add"]
    assert split_projections(model) == 1
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "Slice" not in kinds and kinds.count("MatMul") == 2
    products = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"}
    # named after the projection, so that the int8 export's per-layer errors say which
    assert products == {f"{add}/columns_0_6/MatMul", f"{add}/columns_6_12/MatMul"}
    np.testing.assert_allclose(run_f32(model, x)[0], expected, rtol=1e-6, atol=1e-6)


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


@pytest.mark.parametrize("shapes", ["static", "dynamic"])
def test_the_tiny_unet_runs_its_projections_split_compiled_for_either_shapes(tiny, shapes):
    from fastimg.backends.openvino import OpenVinoSession

    path = tiny[1] / "unet" / "model.onnx"
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }
    as_read = ov.Core().read_model(str(path))
    (expected,) = run_f32(as_read, feeds)
    model = ov.Core().read_model(str(path))
    if shapes == "static":
        model.reshape({name: list(array.shape) for name, array in feeds.items()})
    from fastimg.backends.openvino_rewrites import split_projections

    halves = 2 * split_projections(model)  # the tiny UNet's GEGLUs, each in two halves
    assert halves > 0
    session = OpenVinoSession(path, shapes=shapes, threads=1)
    np.testing.assert_allclose(session.run(feeds)["out_sample"], expected, rtol=1e-4, atol=1e-4)
    split = [names for _, names in compiled_layers(session) if "/columns_" in names]
    assert len(split) >= halves


def test_the_compiled_caches_are_keyed_by_the_rewrites(tiny, tmp_path, monkeypatch):
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
    dynamic = component_options("openvino", manifest, "unet", "fp32").cache_dir
    for keyed in (folder, dynamic):
        options = json.loads((keyed / "key.json").read_text())["options"]
        assert options["rewrites"] == list(openvino_rewrites.REWRITES)
        assert options["rewrites_code"] == openvino_rewrites.cache_key()["rewrites_code"]
    # blobs compiled before a rewrite was added or changed are never imported, for either shapes
    changed = {"rewrites": ["another rewrite"], "rewrites_code": "0" * 16}
    for name, value in changed.items():
        with monkeypatch.context() as patched:
            key = {**openvino_rewrites.cache_key(), name: value}
            patched.setattr(openvino_rewrites, "cache_key", lambda key=key: key)
            options = component_options("openvino", manifest, "unet", "fp32")
            assert options.static_cache(shapes) != folder
            assert options.cache_dir != dynamic
