"""export --cuda-fp16: each component's graph also in fp16 for ONNX Runtime CUDA, verified
against PyTorch, float32 inputs and outputs kept; a VAE that overflows in fp16 keeps none."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import load_manifest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

VARIANT = "cuda-fp16"


def test_every_component_gets_a_verified_fp16_graph_with_float32_io(tiny_cuda_fp16):
    engines = tiny_cuda_fp16[1]
    manifest = load_manifest(engines, full_check=True)  # the new files hashed as listed
    for name in manifest.component_names:
        entry = manifest.components[name]
        variant = entry["variants"][VARIANT]
        assert variant["path"] == f"{name}/model.fp16.onnx" and variant["precision"] == "fp16"
        assert variant["path"] in entry["files"]
        assert variant["parity"]["max_rel_error"] <= variant["parity"]["tolerance"] == 3e-2
        graph = onnx.load(str(engines / variant["path"]))
        weights = [t.data_type for t in graph.graph.initializer if len(t.dims) > 1]
        assert weights and set(weights) == {onnx.TensorProto.FLOAT16}
        fp32 = onnx.load(str(engines / entry["path"]), load_external_data=False)
        assert _io_types(graph) == _io_types(fp32)  # what the session binds: float32 kept
        assert manifest.path(name) == engines / entry["path"]  # the fp32 graph is unchanged


def test_the_fp16_unet_runs_within_fp16s_error_of_the_fp32_one(tiny_cuda_fp16):
    import onnxruntime as ort

    engines = tiny_cuda_fp16[1]
    manifest = load_manifest(engines)
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.array([500, 500], dtype=np.int64),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    outputs = {}
    for label, path in (("fp32", manifest.path("unet")), ("fp16", manifest.path("unet", VARIANT))):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: feeds[i.name].astype(_dtype(i.type)) for i in session.get_inputs()}
        (outputs[label],) = session.run(None, feed)
    assert outputs["fp16"].dtype == np.float32
    scale = np.abs(outputs["fp32"]).max()
    error = np.abs(outputs["fp16"] - outputs["fp32"]).max() / scale
    assert 0 < error < 3e-2  # fp16 arithmetic: not the same graph, within its bound


def _io_types(graph) -> dict:
    values = [*graph.graph.input, *graph.graph.output]
    return {value.name: value.type.tensor_type.elem_type for value in values}


def _dtype(onnx_type: str):
    return {"tensor(int64)": np.int64, "tensor(float)": np.float32}[onnx_type]


def test_a_vae_that_overflows_in_fp16_gets_no_fp16_graph(monkeypatch, tmp_path):
    from fastimg_export import engine_writer

    monkeypatch.setattr(engine_writer, "_vae_overflows_in_fp16", lambda pipe: True)
    said, entry = [], {"files": {}}
    for name in ("vae_encoder", "vae_decoder"):
        engine_writer.add_cuda_fp16_graph(None, name, None, tmp_path, entry, tmp_path, said.append)
    assert entry == {"files": {}} and not list(tmp_path.iterdir())
    assert said == [f"  {n}: no fp16 graph for the GPU: this VAE overflows in fp16 (it runs fp32)"
                    for n in ("vae_encoder", "vae_decoder")]  # fmt: skip


def test_the_export_option_as_a_user_types_it(tmp_path):
    from fastimg_export.random_models import write_random_model

    assert "--cuda-fp16" in CliRunner().invoke(cli, ["export", "--help"]).output
    model = write_random_model("tiny", tmp_path / "model")
    args = ["export", str(model), "-o", str(tmp_path / "e"), "--cuda-fp16"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "unet: fp16 graph for the GPU, relative error" in result.output
    data = json.loads((tmp_path / "e" / MANIFEST).read_text())
    assert all(VARIANT in entry["variants"] for entry in data["components"].values())
    info = CliRunner().invoke(cli, ["info", str(tmp_path / "e")]).output
    (line,) = [
        ln for ln in info.splitlines() if ln.split()[:2] == [VARIANT, "unet/model.fp16.onnx"]
    ]
    rel = data["components"]["unet"]["variants"][VARIANT]["parity"]["max_rel_error"]
    assert line.endswith(f"vs torch: rel {rel:.2e} (limit 0.03)")  # its own check, its bound


def test_a_large_graphs_fp16_weights_go_to_a_data_file_of_their_own(tiny_cuda_fp16, monkeypatch):
    """Beside a graph whose weights are external (model.onnx_data), the fp16 graph's weights
    go to model.fp16.onnx_data: both graphs load and keep their own weights."""
    import onnxruntime as ort

    from fastimg_export import onnx_export

    engines = tiny_cuda_fp16[1]
    folder = engines.parent / "external"
    folder.mkdir()
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # every graph "large"
    full = onnx_export.save_model(engines / "unet" / "model.onnx", folder / "model.onnx", False)
    half = onnx_export.save_model(
        folder / "model.onnx", folder / "model.fp16.onnx", True, "model.fp16.onnx_data"
    )
    assert [p.name for p in full] == ["model.onnx", "model.onnx_data"]
    assert [p.name for p in half] == ["model.fp16.onnx", "model.fp16.onnx_data"]
    assert half[1].stat().st_size < 0.6 * full[1].stat().st_size  # half the bytes a weight
    for path in (full[0], half[0]):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()][0] == "sample"


def test_the_depth_model_gets_an_fp16_graph_too(tmp_path):
    """export --depth-model with --cuda-fp16: the depth map runs in fp16 on the GPU as well."""
    import onnxruntime as ort

    from fastimg_export.depth import export_depth, write_random_depth

    source = write_random_depth(tmp_path / "dpt")
    said = []
    entry, _ = export_depth(str(source), tmp_path / "staging", said.append, cuda_fp16=True)
    variant = entry["variants"][VARIANT]
    assert variant["path"] == "depth/model.fp16.onnx" and variant["path"] in entry["files"]
    assert variant["parity"]["max_rel_error"] <= variant["parity"]["tolerance"] == 3e-2
    assert any(line.startswith("  depth: fp16 graph for the GPU") for line in said)
    session = ort.InferenceSession(str(tmp_path / "staging" / variant["path"]))
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]  # bound as float32
