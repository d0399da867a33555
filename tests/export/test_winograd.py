import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastimg.engine_folder.manifest import load_manifest  # noqa: E402
from fastimg_export import winograd  # noqa: E402


def conv_model(
    in_channels,
    out_channels,
    kernel=3,
    bias=True,
    weight_dtype=np.float32,
    constant_weight=True,
    **attributes,
):
    """A graph of one Conv (dynamic batch, height and width), 'same' padding unless given."""
    rng = np.random.default_rng(0)
    shape = (out_channels, in_channels // attributes.get("group", 1), kernel, kernel)
    weight = (rng.standard_normal(shape) / np.sqrt(9 * in_channels)).astype(weight_dtype)
    attributes.setdefault("pads", [kernel // 2] * 4)
    inputs = ["x", "w"] + (["b"] if bias else [])
    initializers = [numpy_helper.from_array(weight, "w")] if constant_weight else []
    if bias:
        values = rng.standard_normal(out_channels).astype(weight_dtype)
        initializers.append(numpy_helper.from_array(values, "b"))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(weight_dtype))
    graph_inputs = [helper.make_tensor_value_info("x", elem, ["n", in_channels, "h", "w"])]
    if not constant_weight:
        graph_inputs.append(helper.make_tensor_value_info("w", elem, list(shape)))
    graph = helper.make_graph(
        [helper.make_node("Conv", inputs, ["y"], name="conv", **attributes)],
        "one_conv",
        graph_inputs,
        [helper.make_tensor_value_info("y", elem, ["n", out_channels, "h2", "w2"])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


def rewritten(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    count = winograd.rewrite_convolutions(copy)
    onnx.checker.check_model(copy, full_check=True)
    return copy, count


@pytest.mark.parametrize(
    "batch,in_channels,out_channels,height,width,bias",
    [
        (1, 128, 128, 8, 8, True),  # whole tiles
        (2, 128, 160, 9, 13, True),  # partial tiles both ways, more outputs than inputs
        (3, 192, 128, 1, 1, False),  # a single pixel, no bias
        (1, 128, 128, 5, 22, True),
    ],
)
def test_the_winograd_form_computes_the_same_convolution(
    batch, in_channels, out_channels, height, width, bias
):
    model = conv_model(in_channels, out_channels, bias=bias)
    changed, count = rewritten(model)
    assert count == 1
    assert "Conv" in {n.op_type for n in changed.graph.node}  # (the transforms are grouped Convs)
    assert "MatMul" in {n.op_type for n in changed.graph.node}
    x = np.random.default_rng(1).standard_normal((batch, in_channels, height, width))
    x = x.astype(np.float32)
    expected, got = run(model, x), run(changed, x)
    assert got.shape == expected.shape == (batch, out_channels, height, width)
    assert np.abs(got - expected).max() <= 5e-5 * np.abs(expected).max()


def test_one_rewritten_graph_serves_every_size():
    changed, _ = rewritten(conv_model(128, 128))
    model = conv_model(128, 128)
    for shape in [(1, 128, 4, 4), (2, 128, 7, 3), (1, 128, 16, 12)]:
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        assert np.abs(run(changed, x) - run(model, x)).max() <= 5e-5 * np.abs(run(model, x)).max()


@pytest.mark.parametrize(
    "why,model",
    [
        ("stride 2", lambda: conv_model(128, 128, strides=[2, 2])),
        ("grouped", lambda: conv_model(128, 128, group=2)),
        ("dilated", lambda: conv_model(128, 128, dilations=[2, 2], pads=[2, 2, 2, 2])),
        ("no padding", lambda: conv_model(128, 128, pads=[0, 0, 0, 0])),
        ("one-sided padding", lambda: conv_model(128, 128, pads=[0, 0, 1, 1])),
        ("1x1", lambda: conv_model(128, 128, kernel=1)),
        ("5x5", lambda: conv_model(128, 128, kernel=5)),
        ("fp16", lambda: conv_model(128, 128, weight_dtype=np.float16)),
        ("filter computed", lambda: conv_model(128, 128, constant_weight=False)),
        ("few inputs", lambda: conv_model(winograd.MIN_CHANNELS - 1, 128)),
        ("few outputs", lambda: conv_model(128, 3)),
        ("wide", lambda: conv_model(1280, 1280)),
    ],
)
def test_convolutions_it_does_not_pay_on_or_cannot_express_are_left_alone(why, model):
    model = model()
    before = model.SerializeToString()
    assert winograd.filter_bytes(model) == 0
    assert winograd.rewrite_convolutions(model) == 0, why
    assert model.SerializeToString() == before


def test_layers_share_the_transforms_and_keep_unique_names():
    first = conv_model(128, 128)
    graph = first.graph
    graph.node.append(helper.make_node("Conv", ["y", "w", "b"], ["z"], name="conv2", pads=[1] * 4))
    graph.output[0].CopyFrom(
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 128, "h", "w"])
    )
    plain = onnx.ModelProto()
    plain.CopyFrom(first)
    assert winograd.filter_bytes(first) == 2 * 128 * 128 * 9 * 4
    changed, count = rewritten(first)
    assert count == 2
    names = [o for n in changed.graph.node for o in n.output]
    assert len(names) == len(set(names))
    added = [i.name for i in changed.graph.initializer if i.name.startswith("winograd/")]
    assert len(added) == len(set(added)) and "winograd/rows" in added
    x = np.random.default_rng(3).standard_normal((1, 128, 6, 10)).astype(np.float32)
    expected = run(plain, x)
    assert np.abs(run(changed, x) - expected).max() <= 1e-4 * np.abs(expected).max()


def test_the_transform_matrices_are_winograds_f4x4_3x3():
    # The 1-D identity Y = A^T [(G g) * (B^T d)] for a 6-sample signal and a 3-tap filter.
    rng = np.random.default_rng(4)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    direct = np.array([d[i : i + 3] @ g for i in range(4)])
    assert np.allclose(winograd.A_T @ ((winograd.G @ g) * (winograd.B_T @ d)), direct)


def test_export_writes_convolutions_in_winograd_form_for_onnxruntime(tiny_winograd):
    manifest = load_manifest(tiny_winograd[1])
    for name in ("unet", "vae_decoder", "vae_encoder"):
        entry = manifest.components[name]
        variant = entry["variants"]["onnxruntime"]
        assert variant["winograd"]["convolutions"] > 0, name
        assert variant["winograd"]["extra_bytes"] > 0
        assert variant["parity"]["max_rel_error"] <= 1e-3
        assert manifest.path(name, "onnxruntime").name == "model.ort.onnx"
        graph = onnx.load(str(manifest.path(name, "onnxruntime")), load_external_data=False).graph
        converted = sum(n.name.endswith("/winograd/u") for n in graph.node)
        assert converted == variant["winograd"]["convolutions"]
        # OpenVINO's static-shapes graph (GroupNorms rewritten) keeps its convolutions.
        own = onnx.load(str(manifest.path(name, "openvino-static")), load_external_data=False)
        assert not any("/winograd/" in n.name for n in own.graph.node)


def test_a_winograd_graph_that_fails_parity_falls_back_to_attention_alone(
    tiny, tmp_path, monkeypatch
):
    from fastimg_export.engine_writer import export_engines

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    monkeypatch.setattr(winograd, "B_T", winograd.B_T * 1.01)  # a wrong input transform
    lines = []
    out = export_engines(str(tiny[0]), tmp_path / "fallback", log=lines.append)
    assert any("trying attention fusion alone" in line for line in lines)
    variant = load_manifest(out).components["unet"]["variants"]["onnxruntime"]
    assert variant["fused_attention"] > 0 and "winograd" not in variant
    graph = onnx.load(str(out / variant["path"]), load_external_data=False).graph
    assert not any("/winograd/" in n.name for n in graph.node)
