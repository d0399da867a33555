import pytest


@pytest.fixture(scope="module")
def pipe(tiny):
    """The tiny model's pipeline on ONNX Runtime fp32, the exact path the servers run."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
