"""Every file the runtime opens is listed and verified, the graphs' external data included."""

import json
import shutil

import pytest

from fastimg.engine_folder import integrity
from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import load_manifest
from fastimg.errors import ManifestError
from tests.corpus.engines import entry

onnx = pytest.importorskip("onnx")


def with_external_data(engines, location: str, listed: bool = True):
    """Re-save the UNet graph with its weights in `location` (relative to unet/)."""
    graph = engines / "unet" / "model.onnx"
    model = onnx.load(str(graph))
    onnx.save(model, str(graph), save_as_external_data=True, location="weights.bin",
              size_threshold=0, all_tensors_to_one_file=True)  # fmt: skip
    if location != "weights.bin":
        model = onnx.load(str(graph), load_external_data=False)
        for tensor in model.graph.initializer:
            for item in tensor.external_data:
                if item.key == "location":
                    item.value = location
        onnx.save(model, str(graph))
    data = json.loads((engines / MANIFEST).read_text())
    unet = data["components"]["unet"]
    unet.pop("variants", None)
    unet["files"] = {"unet/model.onnx": entry(graph)}
    if listed:
        unet["files"]["unet/weights.bin"] = entry(engines / "unet" / "weights.bin")
    (engines / MANIFEST).write_text(json.dumps(data))


@pytest.fixture
def engines(tiny, tmp_path):
    return shutil.copytree(tiny[1], tmp_path / "engines")


def test_listed_external_data_is_verified_with_its_graph(engines):
    with_external_data(engines, "weights.bin")
    manifest = load_manifest(engines, full_check=True)
    verified = integrity.verify_files(
        engines, manifest.files, manifest.opened_files(), "fix", full=True
    )
    assert "unet/weights.bin" in verified and "unet/model.onnx" in verified


def test_external_data_that_is_not_listed_is_refused(engines):
    with_external_data(engines, "weights.bin", listed=False)
    with pytest.raises(ManifestError, match="external data of unet/model.onnx 'unet/weights.bin'"):
        load_manifest(engines)


def test_external_data_outside_the_folder_is_refused(engines):
    with_external_data(engines, "../../outside.bin")
    with pytest.raises(ManifestError, match="names external data '../../outside.bin' outside"):
        load_manifest(engines)


def test_locations_are_found_across_read_boundaries(tmp_path, monkeypatch):
    name = b"model.onnx_data"
    record = integrity._LOCATION + bytes([len(name)]) + name
    body = b"x" * 5000 + record + b"y" * 7 + record.replace(b"_data", b"_more") + b"z" * 3
    path = tmp_path / "graph.onnx"
    path.write_bytes(body)
    for chunk in (1, 7, 13, 4096, 1 << 20):
        monkeypatch.setattr(integrity, "_CHUNK", chunk)
        digest, found = integrity._hash_and_scan(path, scan=True)
        assert found == ["model.onnx_data", "model.onnx_more"], chunk
        assert digest == integrity.sha256(path)
