"""The img2img node inside ComfyUI's process: its progress bar moves with the UNet's steps and
its Cancel button stops the run as ComfyUI's own interruption (faked ComfyUI modules)."""

import sys
import types

import numpy as np
import pytest
from PIL import Image

from fastimg.comfyui.engines import EnginesHandle
from fastimg.comfyui.run import transform_batch

from .conftest import comfy_image

SETTINGS = {"prompt": "a red barn", "strength": 0.5, "num_inference_steps": 4, "seed": 1}


class Interrupted(Exception):
    """ComfyUI's InterruptProcessingException, faked."""


@pytest.fixture
def comfy(monkeypatch):
    """Fake comfy.utils and comfy.model_management: the progress updates and the interrupt."""
    state = {"updates": 0, "interrupted": False}

    class ProgressBar:
        def __init__(self, total):
            state["total"] = total

        def update(self, value):
            state["updates"] += value

    def throw_exception_if_processing_interrupted():
        if state["interrupted"]:
            raise Interrupted()

    utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    management = types.SimpleNamespace(
        processing_interrupted=lambda: state["interrupted"],
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
    )
    package = types.ModuleType("comfy")
    package.utils, package.model_management = utils, management
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)
    return state


@pytest.fixture(scope="module")
def image(torch):
    rng = np.random.default_rng(4)
    return comfy_image([Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8))], torch)


def test_comfyuis_progress_bar_moves_once_per_unet_step(tiny, comfy, image):
    handle = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32")
    made, _ = transform_batch(handle, image, SETTINGS)
    assert tuple(made.shape) == (1, 32, 32, 3)
    assert comfy["total"] == comfy["updates"] == 2  # strength 0.5 of 4 steps


def test_comfyuis_cancel_stops_the_run_as_comfyuis_interruption(tiny, comfy, image):
    handle = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32")
    comfy["interrupted"] = True
    with pytest.raises(Interrupted):
        transform_batch(handle, image, SETTINGS)
    assert comfy["updates"] == 0
