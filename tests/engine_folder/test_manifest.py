import json
import shutil

import pytest

from fastimg.engine_folder.layout import FORMAT_VERSION, MANIFEST
from fastimg.engine_folder.manifest import load_manifest
from fastimg.errors import EngineError, ManifestError
from tests.corpus import flip_a_byte


@pytest.fixture
def engines(tiny, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(tiny[1], copy)
    return copy


def test_missing_folder_names_the_export_command(tmp_path):
    with pytest.raises(EngineError, match="does not exist.*fastimg export"):
        load_manifest(tmp_path / "nowhere")


def test_folder_without_manifest(engines):
    (engines / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(engines)


def test_corrupt_manifest(engines):
    (engines / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(engines)


def test_manifest_from_a_newer_format(engines):
    data = json.loads((engines / MANIFEST).read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (engines / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="newer than this fastimg reads"):
        load_manifest(engines)


def test_missing_model_file(engines):
    (engines / "unet" / "model.onnx").unlink()
    with pytest.raises(EngineError, match="is missing"):
        load_manifest(engines)


def test_truncated_model_file(engines):
    path = engines / "vae_decoder" / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(EngineError, match="truncated"):
        load_manifest(engines)


@pytest.mark.parametrize(
    "rel", ["unet/model.onnx", "unet/model.ort.onnx", "tokenizer/tokenizer.json"]
)
def test_a_changed_byte_is_caught_by_the_hash_before_loading(engines, rel):
    flip_a_byte(engines / rel)
    with pytest.raises(EngineError, match="does not match the SHA-256"):
        load_manifest(engines)


def test_verified_files_are_not_hashed_again_until_they_change(engines, monkeypatch):
    from fastimg.engine_folder import integrity

    load_manifest(engines)
    hashed = []
    original = integrity.sha256
    monkeypatch.setattr(integrity, "sha256", lambda p: hashed.append(p) or original(p))
    load_manifest(engines)
    assert hashed == []
    # Same size and mtime, different content: only the full check notices.
    flip_a_byte(engines / "vae_encoder" / "model.onnx", keep_mtime=True)
    load_manifest(engines)
    with pytest.raises(EngineError, match="SHA-256"):
        load_manifest(engines, full_check=True)


def test_unwritable_cache_only_means_hashing_again(engines, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTIMG_CACHE_DIR", str(blocker / "cache"))  # under a file: unwritable
    assert load_manifest(engines).folder == engines
    assert load_manifest(engines).folder == engines


def test_a_diffusers_model_folder_is_named_as_such(tiny):
    with pytest.raises(ManifestError, match="is a diffusers model.*fastimg export"):
        load_manifest(tiny[0])


def test_an_optimum_style_onnx_folder_is_named_as_such(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ManifestError, match="another tool"):
        load_manifest(tmp_path)


def test_without_a_memory_model_or_stated_limit_the_default_size_limit_holds(engines):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.engine_folder.manifest import DEFAULT_MAX_SIDE

    assert load_manifest(engines).max_side is None  # the export states no limit
    data = json.loads((engines / MANIFEST).read_text())
    del data["memory"]  # as folders exported before the memory model
    (engines / MANIFEST).write_text(json.dumps(data))
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime")
    assert pipe.max_side == DEFAULT_MAX_SIDE
    data["shapes"] = {"max_side": 1024}
    (engines / MANIFEST).write_text(json.dumps(data))
    assert Img2ImgPipeline.from_engines(engines, backend="onnxruntime").max_side == 1024


def test_whether_the_vae_overflows_in_fp16_is_read_or_inferred_for_older_folders(
    tiny, tiny_sdxl, tiny_sdxl_taesdxl, tmp_path
):
    assert load_manifest(tiny_sdxl[1]).vae_overflows_in_fp16 is True
    assert load_manifest(tiny[1]).vae_overflows_in_fp16 is False
    assert load_manifest(tiny_sdxl_taesdxl[1]).vae_overflows_in_fp16 is False
    older = shutil.copytree(tiny_sdxl[1], tmp_path / "older")
    data = json.loads((older / "manifest.json").read_text())
    del data["vae"]["overflows_in_fp16"]  # exported before the manifest said so
    (older / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(older).vae_overflows_in_fp16 is True
    data["components"]["vae_decoder"]["precision"] = "fp16"  # a VAE made for fp16
    (older / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(older).vae_overflows_in_fp16 is False


def test_the_manifest_answers_by_name_from_the_checked_model(tiny):
    manifest = load_manifest(tiny[1])
    data = json.loads((tiny[1] / MANIFEST).read_text())
    assert manifest.model_family == data["model_family"]
    assert manifest.source == data["source"]
    assert manifest.kind == "onnx" and manifest.created == data["created"]
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.precision == data["precision"]
    assert manifest.latent_channels == data["latent_channels"] == 4
    assert manifest.vae_kind == data["vae"]["kind"] and manifest.vae_source == data["vae"]["source"]
    assert manifest.tools == data["tools"] and manifest.plan_sets == {}
    assert data["memory"] and manifest.memory_model("text_encoder") is None
    for component, recorded in data["memory"].items():
        assert manifest.memory_model(component).per_pixel == recorded["per_pixel"]
    for component in manifest.component_names:
        assert manifest.component_precision(component) == data["precision"]


def test_fields_a_manifest_leaves_out_take_the_schema_defaults():
    from fastimg.engine_folder.manifest import Manifest
    from tests.manifests import complete

    data = complete({"unet": {"precision": "fp16"}}, source="checkpoints/model.safetensors")
    manifest = Manifest.from_data(None, data)
    assert manifest.model_family is None and manifest.precision == "fp32"
    assert manifest.latent_channels == 4 and manifest.vae_kind == "kl"
    assert manifest.unet_in_channels == 4 and not manifest.inpainting  # (older folders)
    assert manifest.memory_model("unet") is None and manifest.loras == []
    assert manifest.component_precision("unet") == "fp16"
    assert manifest.component_precision("vae_decoder") == "fp32"
    assert manifest.model_name == "model"  # a checkpoint is named by its file, as A1111 does
    assert manifest.vae_source == "checkpoints/model.safetensors"
    assert Manifest.from_data(None, {**data, "source": "org/repo"}).model_name == "repo"


def test_manifest_data_is_checked_when_a_manifest_is_made_from_it():
    from fastimg.engine_folder.manifest import Manifest
    from tests.manifests import complete

    with pytest.raises(ManifestError, match="field latent_channels is invalid"):
        Manifest.from_data(None, complete(latent_channels="4"))


def test_manifest_text_is_written_only_for_data_the_schema_accepts():
    from fastimg.engine_folder.schema import serialise
    from tests.manifests import complete

    data = complete(tools={"onnx": "1.17"})
    assert json.loads(serialise(data, "here", "fix it")) == data
    with pytest.raises(ManifestError, match="field vae_scale_factor is missing.*: fix it"):
        serialise({k: v for k, v in data.items() if k != "vae_scale_factor"}, "here", "fix it")
    with pytest.raises(ManifestError, match="field memory.unet.per_pixel is invalid"):
        serialise(
            {**data, "memory": {"unet": {"per_pixel": float("nan"), "per_token_pair": 0}}},
            "here",
            "fix it",
        )
