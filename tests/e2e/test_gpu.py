"""GPU backends against the CPU output on the tiny model (marked gpu: skipped without a GPU).

Each test exports the tiny model (session fixture), runs img2img on a GPU backend and compares
the image with ONNX Runtime fp32 on the CPU for the same seed.
"""

import pytest

from fastimg.images import psnr
from fastimg.pipeline import Img2ImgPipeline

pytestmark = pytest.mark.gpu

JOB = dict(prompt="a red fox", strength=0.6, num_inference_steps=8, guidance_scale=5.0, seed=4)


@pytest.fixture(scope="module")
def reference(tiny, photo_module):
    cpu = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    return cpu(image=photo_module, **JOB)[0]


@pytest.fixture(scope="module")
def photo_module():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray((np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) * 255).astype("u1"))


def _require(backend: str, tiny):
    from fastimg.backends.select import unavailable
    from fastimg.manifest import load_manifest

    reason = unavailable(backend, load_manifest(tiny[1]))
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
def test_onnxruntime_cuda_matches_the_cpu(tiny, reference, photo_module, sampler):
    _require("onnxruntime-cuda", tiny)
    cpu = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    expected = cpu(image=photo_module, **{**JOB, "scheduler": sampler})[0]
    gpu = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime-cuda")
    assert gpu.device == "cuda"
    assert psnr(expected, gpu(image=photo_module, **{**JOB, "scheduler": sampler})[0]) >= 40.0


@pytest.mark.parametrize("static", [True, False])
def test_tensorrt_builds_and_matches_the_cpu(tiny, tmp_path, reference, photo_module, static):
    pytest.importorskip("tensorrt")
    import shutil

    from fastimg.profiles import Profile
    from fastimg_export.trt_build import build_engines

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    size = (64, 64, 64) if static else (64, 64, 128)
    build_engines(engines, Profile(size, size), precision="fp32", log=print)
    _require("tensorrt", (None, engines))
    pipe = Img2ImgPipeline.from_engines(engines, backend="tensorrt")
    first = pipe(image=photo_module, **JOB)[0]
    again = pipe(image=photo_module, **JOB)[0]  # replayed from CUDA graphs when static
    assert psnr(reference, first) >= 35.0
    assert psnr(first, again) == float("inf")
