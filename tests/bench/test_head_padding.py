"""fastimg_bench.head_padding: attention heads zero-padded, the attention unchanged."""

import numpy as np
import pytest

from tests.backends.openvino_graphs import run_f32

ov = pytest.importorskip("openvino")

from fastimg_bench.head_padding import pad_attention_heads  # noqa: E402


def _attention(heads: int, dim: int, transposed=False, bias=None, scale=None, extra_reader=False):
    """Self-attention as torch exports scaled_dot_product_attention: the query, key and value
    projected (weights [in, out], or [out, in] `transposed`; `bias` "after" or "before" the
    product in the Add), reshaped to [1, -1, heads, dim], transposed, the query and key each
    times the square root of the scale (or `scale`); random weights. `extra_reader`: the key's
    transposed heads are an output of the graph too."""
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    tokens, width = 6, 5
    x = ops.parameter([1, tokens, width], np.float32)
    shape = ops.constant(np.array([1, -1, heads, dim], np.int64))
    root = ops.constant(scale if scale is not None else np.array([dim**-0.25], np.float32))
    extra = []

    def side(order, scaled=True):
        size = (heads * dim, width) if transposed else (width, heads * dim)
        weights = ops.constant(rng.standard_normal(size).astype(np.float32))
        projected = ops.matmul(x, weights, False, transposed)
        if bias:
            shift = ops.constant(rng.standard_normal(heads * dim).astype(np.float32))
            projected = ops.add(*((projected, shift) if bias == "after" else (shift, projected)))
        moved = ops.transpose(ops.reshape(projected, shape, False), ops.constant(order))
        if order == [0, 2, 3, 1] and extra_reader:
            extra.append(ops.relu(moved))
        return ops.multiply(moved, root) if scaled else moved

    scores = ops.softmax(ops.matmul(side([0, 2, 1, 3]), side([0, 2, 3, 1]), False, False), -1)
    out = ops.matmul(scores, side([0, 2, 1, 3], scaled=False), False, False)
    return ov.Model([out, *extra], [x])


@pytest.mark.parametrize(
    ("transposed", "bias"), [(False, None), (True, None), (False, "after"), (True, "before")]
)
def test_heads_padded_with_zeros_give_the_same_attention(transposed, bias):
    x = np.random.default_rng(1).standard_normal((1, 6, 5)).astype(np.float32)
    expected = run_f32(_attention(2, 3, transposed, bias), x)[0]
    model = _attention(2, 3, transposed, bias)
    assert pad_attention_heads(model, width=8) == 1
    shapes = [list(op.get_output_partial_shape(0).to_shape()) for op in model.get_ordered_ops()
              if op.get_type_name() == "Transpose"]  # fmt: skip
    # the query's and key's heads 8 wide, the value's as they were
    assert sorted(shapes) == [[1, 2, 6, 3], [1, 2, 6, 8], [1, 2, 8, 6]]
    np.testing.assert_allclose(run_f32(model, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_heads_as_wide_as_asked_are_left_as_they_are():
    assert pad_attention_heads(_attention(2, 8), width=8) == 0
    model = _attention(2, 3)
    assert pad_attention_heads(model, width=4) == 1
    assert pad_attention_heads(model, width=4) == 0  # (its heads are 4 wide now)


@pytest.mark.parametrize(
    "build",
    [
        lambda: _attention(2, 3, extra_reader=True),  # padding would change another reader
        lambda: _attention(2, 3, scale=np.full((1, 2, 1, 1), 0.7, np.float32)),  # per head
    ],
    ids=["heads-read-elsewhere", "scale-per-head"],
)
def test_an_attention_the_padding_would_change_is_left_as_it_is(build):
    x = np.random.default_rng(1).standard_normal((1, 6, 5)).astype(np.float32)
    model = build()
    expected = run_f32(build(), x)
    assert pad_attention_heads(model, width=8) == 0
    for ours, theirs in zip(run_f32(model, x), expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_the_tiny_unet_with_its_heads_padded_gives_the_same_output(tiny):
    path = tiny[1] / "unet" / "model.onnx"
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32),
    }
    outputs = []
    for pad in (False, True):
        model = ov.Core().read_model(str(path))
        model.reshape({name: ov.PartialShape(list(a.shape)) for name, a in feeds.items()})
        if pad:
            assert pad_attention_heads(model, width=16) > 0
        outputs.append(run_f32(model, feeds)[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
