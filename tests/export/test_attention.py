import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fastimg.engine_folder.manifest import load_manifest  # noqa: E402
from fastimg_export.attention import fuse_attention  # noqa: E402


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def unet_feeds(batch=2, h=8, w=12, width=32):
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((batch, 4, h, w), dtype=np.float32),
        "timestep": np.array([500.0, 20.0][:batch], np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, width), dtype=np.float32),
    }


def test_every_attention_of_the_unet_becomes_one_fused_node(tiny):
    path = load_manifest(tiny[1]).path("unet")
    standard = onnx.load(str(path))
    softmaxes = sum(n.op_type == "Softmax" for n in standard.graph.node)
    fused = onnx.load(str(path))
    assert fuse_attention(fused) == softmaxes > 0
    ops = [n.op_type for n in fused.graph.node]
    assert "Softmax" not in ops and ops.count("MultiHeadAttention") == softmaxes
    onnx.checker.check_model(fused)
    feeds = unet_feeds()
    expected, got = run(standard, feeds), run(fused, feeds)
    assert np.abs(expected - got).max() <= 1e-5 * np.abs(expected).max()


def test_a_graph_without_attention_is_left_alone(tiny):
    encoder = onnx.load(str(load_manifest(tiny[1]).path("text_encoder")))  # causal mask: no match
    before = encoder.SerializeToString()
    assert fuse_attention(encoder) == 0
    assert encoder.SerializeToString() == before


def test_export_records_the_fused_variant_for_onnxruntime_only(tiny):
    manifest = load_manifest(tiny[1])
    unet = manifest.components["unet"]
    variant = unet["variants"]["onnxruntime"]
    assert variant["fused_attention"] > 0 and variant["parity"]["max_rel_error"] <= 1e-3
    assert variant["path"] in unet["files"]  # hashed and size-checked like every file
    assert manifest.path("unet", "onnxruntime").name == "model.ort.onnx"
    assert manifest.path("unet").name == "model.onnx"
    own = onnx.load(str(manifest.path("unet", "openvino-static")))  # (its GroupNorms rewritten)
    assert not any(n.op_type == "MultiHeadAttention" for n in own.graph.node)
