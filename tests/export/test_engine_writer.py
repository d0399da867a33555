import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from fastimg.diffusion.rng import TorchCompatibleGenerator
from fastimg.engine_folder.layout import COMPONENTS, MANIFEST
from fastimg.engine_folder.manifest import load_manifest
from fastimg.errors import EngineError, InputError
from tests.export.exporting import start_export

pytest.importorskip("torch")
from fastimg_export import engine_writer, verify  # noqa: E402


def test_manifest_describes_every_component_and_file(tiny):
    _, engines = tiny
    manifest = load_manifest(engines)
    data = manifest.data
    assert data["precision"] == "fp32" and data["vae_scale_factor"] == 8
    assert data["vae_scaling_factor"] == pytest.approx(0.18215)
    assert data["scheduler"]["_class_name"] == "DDIMScheduler"
    assert (engines / "scheduler" / "scheduler_config.json").is_file()
    assert set(data["tools"]) >= {"torch", "diffusers", "onnx", "onnxruntime", "fastimg"}
    for name in COMPONENTS:
        entry = manifest.components[name]
        assert entry["parity"]["max_rel_error"] <= entry["parity"]["tolerance"] == 1e-3
        for rel, info in entry["files"].items():
            assert engine_writer.sha256(engines / rel) == info["sha256"]
    unet = manifest.components["unet"]["inputs"]
    assert unet["timestep"] == {"dtype": "float32", "shape": ["batch"]}
    assert unet["sample"]["shape"] == ["batch", 4, "latent_height", "latent_width"]
    assert "latent_parameters" in manifest.components["vae_encoder"]["outputs"]


def test_onnx_graphs_have_dynamic_batch_and_size(tiny):
    import onnx

    _, engines = tiny
    graph = onnx.load(str(engines / "unet" / "model.onnx")).graph
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.input
    }
    assert dims["sample"] == ["batch", 4, "latent_height", "latent_width"]
    assert dims["timestep"] == ["batch"]


def test_existing_engines_are_not_replaced_without_overwrite(tiny, tmp_path):
    model, _ = tiny
    out = engine_writer.export_engines(str(model), tmp_path / "e", log=lambda m: None)
    with pytest.raises(InputError, match="--overwrite"):
        engine_writer.export_engines(str(model), out, log=lambda m: None)
    (tmp_path / "user-data").mkdir()
    (tmp_path / "user-data" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a fastimg engine folder"):
        engine_writer.export_engines(str(model), tmp_path / "user-data", overwrite=True)
    assert (tmp_path / "user-data" / "notes.txt").read_text() == "keep me"


def test_failed_verification_keeps_previous_engines_and_leaves_no_partial(
    tiny, tmp_path, monkeypatch
):
    model, _ = tiny
    out = engine_writer.export_engines(str(model), tmp_path / "e", log=lambda m: None)
    before = (out / MANIFEST).read_text()
    monkeypatch.setitem(verify.TOLERANCE, "fp32", 0.0)  # no export can pass this
    with pytest.raises(EngineError, match="differs from PyTorch"):
        engine_writer.export_engines(str(model), out, overwrite=True, log=lambda m: None)
    assert (out / MANIFEST).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_killed_export_leaves_no_folder_that_looks_valid(tiny, tmp_path):
    model, _ = tiny
    out = tmp_path / "killed"
    proc = start_export(model, out, until="exporting unet", hang=True)  # killed while staging
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.partial-")]
    assert leftovers and not any((p / MANIFEST).exists() for p in leftovers)
    with pytest.raises(EngineError):
        load_manifest(out)
    engine_writer.export_engines(str(model), out, log=lambda m: None)  # sweeps the leftover
    assert [p.name for p in tmp_path.iterdir()] == ["killed"]
    load_manifest(out)


def test_a_full_disk_stops_the_export_with_the_fix_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg_export import onnx_export

    model, _ = tiny
    saved = onnx_export.save_model
    written = []

    def fill_the_disk(raw, dest, fp16=False):
        if dest.parent.name == "unet":  # after the text encoder and the VAE were written
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        written.append(dest)
        return saved(raw, dest, fp16=fp16)

    monkeypatch.setattr(onnx_export, "save_model", fill_the_disk)
    out = tmp_path / "full"
    result = CliRunner().invoke(cli, ["export", str(model), "-o", str(out)])
    assert result.exit_code == 1 and written
    assert "is full" in result.output and "free some space and export again" in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert list(tmp_path.iterdir()) == []  # no engine folder and no partial one


def test_large_models_are_saved_with_one_external_data_file(tiny, tmp_path, monkeypatch):
    from fastimg_export import onnx_export

    model, _ = tiny
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 100_000)
    out = engine_writer.export_engines(str(model), tmp_path / "ext", log=lambda m: None)
    files = load_manifest(out).components["unet"]["files"]
    assert sorted(files) == [
        "unet/model.onnx", "unet/model.onnx_data", "unet/model.ort.onnx", "unet/model.ov.onnx"
    ]  # fmt: skip
    # The graphs rewritten for ONNX Runtime and OpenVINO point at the same weights, not copies
    # (OpenVINO's: about 25 named nodes a GroupNorm, a tenth of the tiny UNet's data).
    assert files["unet/model.ort.onnx"]["bytes"] < files["unet/model.onnx_data"]["bytes"] / 10
    assert files["unet/model.ov.onnx"]["bytes"] < files["unet/model.onnx_data"]["bytes"] / 5
    variant = load_manifest(out).components["unet"]["variants"]["openvino-static"]
    assert variant["data"] == ["unet/model.onnx_data"]  # what its memory estimate counts
    assert files["unet/model.onnx_data"]["bytes"] > files["unet/model.onnx"]["bytes"]
    assert os.path.getsize(out / "unet" / "model.onnx") < 1_000_000
    umask = os.umask(0)
    os.umask(umask)
    for rel in files:  # the weights are as readable as any other file the export writes
        assert (out / rel).stat().st_mode & 0o777 == 0o666 & ~umask
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(out, backend="onnxruntime")
    latents = pipe.encode_image(np.zeros((1, 3, 64, 64), np.float32), TorchCompatibleGenerator(0))
    assert latents.shape == (1, 4, 8, 8)


def test_unknown_precision_is_rejected(tiny, tmp_path):
    with pytest.raises(InputError, match="precision"):
        engine_writer.export_engines(str(tiny[0]), tmp_path / "x", precision="int4")


def test_the_manifest_is_written_from_the_schema_model(tiny):
    from fastimg.engine_folder.schema import EngineManifest

    text = (Path(tiny[1]) / MANIFEST).read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the manifest"))
    model = EngineManifest.model_validate(data)
    assert model.model_dump(mode="json", exclude_unset=True) == data


def test_an_export_whose_manifest_the_runtime_would_refuse_writes_no_folder(
    tiny, tmp_path, monkeypatch
):
    from fastimg.errors import ManifestError

    monkeypatch.setattr(engine_writer, "_tool_versions", lambda: {"torch": 2})  # not text
    with pytest.raises(ManifestError, match="field tools.torch is invalid"):
        engine_writer.export_engines(str(tiny[0]), tmp_path / "e", log=lambda m: None)
    assert not (tmp_path / "e").exists()
    assert not list(tmp_path.glob(".e.partial-*"))
