import os
import shutil

import pytest

from fastimg.backends.select import installed
from fastimg.images import psnr
from fastimg.pipeline import OPENVINO_CACHE, Img2ImgPipeline


class CountingSession:
    def __init__(self, session):
        self.session, self.calls = session, 0
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds):
        self.calls += 1
        return self.session.run(feeds)


def test_prompt_embeddings_are_computed_once_per_prompt(tiny, photo):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    text = pipe.sessions["text_encoder"] = CountingSession(pipe.sessions["text_encoder"])
    unet = pipe.sessions["unet"] = CountingSession(pipe.sessions["unet"])
    job = dict(image=photo, strength=0.5, num_inference_steps=4, guidance_scale=5.0, seed=3)
    first = pipe("a cat", negative_prompt="blur", **job)[0]
    again = pipe("a cat", negative_prompt="blur", **job)[0]
    assert text.calls == 1 and unet.calls == 4
    assert psnr(first, again) == float("inf")
    pipe("a cat", negative_prompt="fog", **job)
    pipe("a dog", negative_prompt="blur", **job)
    pipe("a cat", **{**job, "guidance_scale": 1.0})  # no CFG: another embedding batch
    assert text.calls == 4


def test_prompt_cache_is_bounded(tiny):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    for k in range(100):
        pipe.encode_prompt(f"prompt {k}", None, cfg=False)
    assert len(pipe._prompt_cache) <= 32


def test_onnxruntime_leaves_the_engine_folder_alone(tmp_path, tiny):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    before = sorted(engines.rglob("*"))
    Img2ImgPipeline.from_engines(engines, backend="onnxruntime")
    assert sorted(engines.rglob("*")) == before


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
def test_openvino_caches_compiled_models_beside_the_engines(tmp_path, tiny, photo):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=3)
    first = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")(**job)[0]
    blobs = sorted((engines / OPENVINO_CACHE).iterdir())
    assert len(blobs) >= 4  # one compiled blob per component
    again = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")(**job)[0]
    assert sorted((engines / OPENVINO_CACHE).iterdir()) == blobs  # reused, not rebuilt
    assert psnr(first, again) == float("inf")


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_openvino_runs_from_a_read_only_engine_folder(tmp_path, tiny, photo):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    engines.chmod(0o555)
    try:
        pipe = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")
        (out,) = pipe(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=3)
        assert out.size == (88, 64)
        assert not (engines / OPENVINO_CACHE).exists()
    finally:
        engines.chmod(0o755)
