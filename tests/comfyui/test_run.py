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


def test_masks_and_control_images_go_one_for_all_or_one_each(tiny, torch, image):
    from fastimg.errors import InputError

    handle = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32")
    pair = torch.cat([image, image.flip(1)])
    masks = torch.ones((2, 32, 32))
    masks[0, :, 16:] = 0.0  # the first repaints its left half, the second all
    each, _ = transform_batch(handle, pair, SETTINGS, mask=masks)
    pipe = handle.pipeline()
    for index, picture in enumerate(comfy_pictures(pair)):
        mask = Image.fromarray(np.rint(masks[index].numpy() * 255).astype(np.uint8))
        (expected,) = pipe(image=picture, mask_image=mask, **SETTINGS)
        got = np.clip(255.0 * each[index].numpy(), 0, 255).astype(np.uint8)
        assert np.array_equal(got, np.asarray(expected))
    with pytest.raises(InputError, match="3 mask images for 2 images: give one mask image"):
        transform_batch(handle, pair, SETTINGS, mask=torch.zeros((3, 32, 32)))
    with pytest.raises(InputError, match="2 control images for 1 images"):
        transform_batch(handle, image, SETTINGS, control_image=pair)


def comfy_pictures(batch) -> list[Image.Image]:
    return [Image.fromarray(np.rint(one.numpy() * 255).astype(np.uint8)) for one in batch]
