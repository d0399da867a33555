import os
import shutil
import subprocess
import sys

import pytest

from fastimg.backends.registry import describe
from fastimg.backends.select import installed
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

OPENVINO_CACHE = describe("openvino").cache


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
    assert len(pipe.prompts.cache) <= 32


def test_onnxruntime_leaves_the_engine_folder_alone(tmp_path, tiny):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    before = sorted(engines.rglob("*"))
    Img2ImgPipeline.from_engines(engines, backend="onnxruntime")
    assert sorted(engines.rglob("*")) == before


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
def test_openvino_caches_compiled_models_beside_the_engines(tmp_path, tiny, photo):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=3)
    first = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")(**job)[0]

    def blobs():
        files = (engines / OPENVINO_CACHE).rglob("*.blob")
        return sorted((p, p.stat().st_mtime_ns) for p in files)

    compiled = blobs()
    assert len(compiled) >= 4  # one compiled blob per component, in its keyed folder
    assert len({path.parent for path, _ in compiled}) == 4
    again = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")(**job)[0]
    assert blobs() == compiled  # reused, not rebuilt
    assert psnr(first, again) == float("inf")


READ_ONLY_RUN = """
import sys
from pathlib import Path
from fastimg.media.images import EXAMPLE_IMAGE
from fastimg.media.images import load_image
from fastimg.diffusion.pipeline import Img2ImgPipeline

engines = Path(sys.argv[1])
try:
    (engines / "probe").write_text("x")
    print("writable")
except OSError:
    print("read-only")
pipe = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")
image = load_image(EXAMPLE_IMAGE).resize((96, 64))
(out,) = pipe(prompt="a cat", image=image, strength=0.5, num_inference_steps=4, seed=3)
print(out.size)
"""


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
def test_openvino_runs_from_a_read_only_engine_folder(tmp_path, tiny):
    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    shutil.rmtree(engines / OPENVINO_CACHE, ignore_errors=True)
    command = [sys.executable, "-c", READ_ONLY_RUN, str(engines)]
    if os.geteuid() == 0:  # root writes through file modes: mount the folder read-only instead
        if shutil.which("unshare") is None:
            pytest.skip("as root this needs unshare(1) for a read-only bind mount")
        remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", remount, str(engines), *command]
    else:
        engines.chmod(0o555)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        engines.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["read-only", "(96, 64)"]
    assert not (engines / OPENVINO_CACHE).exists()
