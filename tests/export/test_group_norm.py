import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from fastimg.engine_folder.manifest import load_manifest  # noqa: E402
from fastimg_export.group_norm import reduce_group_norms  # noqa: E402


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


class Block(torch.nn.Module):
    """GroupNorms as the VAE and the UNet have them: on a 4-D map and on a 3-D sequence."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 16, eps=1e-6)
        self.seq_norm = torch.nn.GroupNorm(8, 16)
        for norm in (self.norm, self.seq_norm):  # (not the ones and zeros they start with)
            torch.nn.init.normal_(norm.weight)
            torch.nn.init.normal_(norm.bias)

    def forward(self, x):
        y = torch.nn.functional.silu(self.norm(self.conv(x)))
        return self.seq_norm(y.flatten(2)) + 3.0  # [N, C, H*W]


def exported(opset: int):
    buffer = io.BytesIO()
    x = torch.randn(2, 3, 6, 10)
    torch.onnx.export(Block().eval(), (x,), buffer, opset_version=opset, input_names=["x"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, dynamo=False)  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset", [17, 18])
def test_group_norms_become_reductions_of_the_same_function(opset):
    torch.manual_seed(0)
    standard = exported(opset)
    rewritten = onnx.load_from_string(standard.SerializeToString())
    assert reduce_group_norms(rewritten) == 2
    ops = [n.op_type for n in rewritten.graph.node]
    assert "InstanceNormalization" not in ops and ops.count("ReduceMean") == 8
    read = {name for n in rewritten.graph.node for name in n.input}
    assert {i.name for i in rewritten.graph.initializer} <= read  # none left behind
    onnx.checker.check_model(rewritten, full_check=True)
    rng = np.random.default_rng(1)
    for shape in [(2, 3, 6, 10), (1, 3, 9, 4)]:  # other shapes than the export's
        feeds = {"x": (rng.standard_normal(shape) * 4 + 5).astype(np.float32)}  # off-centre
        expected, got = run(standard, feeds), run(rewritten, feeds)
        assert np.abs(expected - got).max() <= 1e-5 * np.abs(expected).max()


def test_the_vae_decoders_group_norms_are_all_rewritten_and_its_output_kept(tiny):
    path = load_manifest(tiny[1]).path("vae_decoder")
    standard = onnx.load(str(path))
    norms = sum(n.op_type == "InstanceNormalization" for n in standard.graph.node)
    rewritten = onnx.load(str(path))
    assert reduce_group_norms(rewritten) == norms > 0
    assert not any(n.op_type == "InstanceNormalization" for n in rewritten.graph.node)
    feeds = {"latent_sample": np.random.default_rng(2).standard_normal((1, 4, 8, 12), np.float32)}
    expected, got = run(standard, feeds), run(rewritten, feeds)
    assert np.abs(expected - got).max() <= 1e-5 * np.abs(expected).max()


def test_a_graph_without_group_norms_is_left_alone(tiny):
    encoder = onnx.load(str(load_manifest(tiny[1]).path("text_encoder")))  # LayerNorms only
    before = encoder.SerializeToString()
    assert reduce_group_norms(encoder) == 0
    assert encoder.SerializeToString() == before
