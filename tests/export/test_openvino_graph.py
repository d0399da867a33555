from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("torch")

from fastimg.engine_folder.manifest import Manifest, load_manifest  # noqa: E402


def test_the_components_with_group_norms_get_an_openvino_graph_verified_like_theirs(tiny):
    manifest = load_manifest(tiny[1])
    for name in ("unet", "vae_encoder", "vae_decoder"):
        entry = manifest.components[name]
        variant = entry["variants"]["openvino-static"]
        assert variant["path"] == f"{name}/model.ov.onnx" and variant["path"] in entry["files"]
        assert variant["group_norms"] > 0
        assert variant["parity"]["max_rel_error"] <= entry["parity"]["tolerance"]
    assert "openvino-static" not in manifest.components["text_encoder"].get("variants", {})


def test_openvino_runs_it_with_static_shapes_and_its_images_are_the_standard_graphs(
    tiny, photo, monkeypatch
):
    from fastimg.backends.openvino import OpenVinoSession
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    ran, original = [], OpenVinoSession.run

    def run(self, feeds):
        ran.append(f"{Path(self._path).parent.name}/{Path(self._path).name}")
        return original(self, feeds)

    monkeypatch.setattr(OpenVinoSession, "run", run)
    manifest = load_manifest(tiny[1])
    job = dict(prompt="a cat", image=photo, strength=0.6, num_inference_steps=4, seed=3)
    (ours,) = Img2ImgPipeline(manifest, "openvino", "fp32", shapes="static")(**job)
    rewritten = {f"{n}/model.ov.onnx" for n in ("vae_encoder", "unet", "vae_decoder")}
    assert set(ran) == {"text_encoder/model.onnx", *rewritten}
    ran.clear()
    (dynamic,) = Img2ImgPipeline(manifest, "openvino", "fp32")(**job)
    assert {path.split("/")[1] for path in ran} == {"model.onnx"}  # dynamic: the exported graphs
    standard = {**manifest.data}
    standard["components"] = {
        name: {**entry, "variants": {}} for name, entry in manifest.data["components"].items()
    }
    ran.clear()
    plain = Img2ImgPipeline(
        Manifest.from_data(tiny[1], standard), "openvino", "fp32", shapes="static"
    )
    (theirs,) = plain(**job)
    assert {path.split("/")[1] for path in ran} == {"model.onnx"}
    assert psnr(ours, theirs) >= 60 and psnr(ours, dynamic) >= 60  # one function, to rounding


def test_a_rewritten_graph_that_fails_parity_is_not_kept(tmp_path, monkeypatch):
    from fastimg_export import openvino_graph, verify
    from fastimg_export.engine_writer import export_engines
    from fastimg_export.random_models import write_random_model

    real, told = verify.compare, []

    def compare(reference, path):
        found = real(reference, path)
        return {**found, "max_rel_error": 1.0} if path.name == "model.ov.onnx" else found

    monkeypatch.setattr(openvino_graph.verify, "compare", compare)
    model = write_random_model("tiny", tmp_path / "model")
    out = export_engines(str(model), tmp_path / "engines", log=told.append)
    manifest = load_manifest(out)
    for name, entry in manifest.components.items():
        assert "openvino-static" not in entry.get("variants", {}), name
        assert not (out / name / "model.ov.onnx").exists()
    assert any("OpenVINO's rewritten graph differs from PyTorch" in line for line in told)
    assert np.isfinite(manifest.components["unet"]["parity"]["max_rel_error"])


def test_with_auto_shapes_a_shapes_first_call_compiles_the_exported_graph_and_its_second_this_one(
    tiny, photo, monkeypatch
):
    from fastimg.backends.openvino import OpenVinoSession
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    compiled = []
    dynamic, static = OpenVinoSession._compile_dynamic, OpenVinoSession._compile_static

    def compile_dynamic(self):
        compiled.append(f"{Path(self._path).parent.name}/{Path(self._dynamic_path).name}")
        return dynamic(self)

    def compile_static(self, shapes):  # (compiled, or taken from its cache)
        compiled.append(f"{Path(self._path).parent.name}/{Path(self._path).name} static")
        return static(self, shapes)

    monkeypatch.setattr(OpenVinoSession, "_compile_dynamic", compile_dynamic)
    monkeypatch.setattr(OpenVinoSession, "_compile_static", compile_static)
    pipe = Img2ImgPipeline(load_manifest(tiny[1]), "openvino", "fp32", shapes="auto")
    rewritten = ("vae_encoder", "unet", "vae_decoder")
    assert set(compiled) == {"text_encoder/model.onnx", *(f"{n}/model.onnx" for n in rewritten)}
    job = dict(prompt="a cat", image=photo, strength=0.6, num_inference_steps=2, seed=3)
    pipe(**job)
    pipe(**job)  # the second call of these shapes: compiled for them, from the GroupNorm graph
    static = {f"{n}/model.ov.onnx static" for n in rewritten}
    assert static <= set(compiled)
    others = set(compiled) - static - {f"{n}/model.onnx" for n in (*rewritten, "text_encoder")}
    assert others <= {"text_encoder/model.onnx static"}
