"""Frames and a counting session wrapper shared by the stream engine's tests."""

import numpy as np
import pytest
from PIL import Image


class CountingSession:
    """A session that counts its runs (and the rows of its sample input)."""

    def __init__(self, session):
        self.session, self.calls, self.rows = session, 0, []
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds):
        self.calls += 1
        self.rows.append(len(feeds["sample"]) if "sample" in feeds else 0)
        return self.session.run(feeds)


@pytest.fixture
def frames():
    """Six different deterministic 64x48 RGB frames."""
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(6)]


@pytest.fixture(scope="module")
def tiny_pipe(tiny):
    """The tiny model's pipeline on ONNX Runtime (fp32, the exact path)."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
