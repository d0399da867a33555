import json
import shutil

import pytest

from fastimg.errors import EngineError, ManifestError
from fastimg.manifest import FORMAT_VERSION, MANIFEST, load_manifest


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
