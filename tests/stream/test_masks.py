"""Masks in the stream engine: one mask for every frame, as the single masked call inpaints."""

import numpy as np
import pytest
from PIL import Image

from fastimg.diffusion.masks import binarize, to_latent_size
from fastimg.diffusion.rng import TorchCompatibleGenerator
from fastimg.errors import InputError
from fastimg.media import images
from fastimg.media.images import psnr
from fastimg.stream.engine import StreamEngine, StreamSettings

from .conftest import CountingSession


@pytest.fixture
def mask():
    """A white rectangle (repaint) on black (keep), the frames' size."""
    picture = np.zeros((48, 64), dtype=np.uint8)
    picture[8:32, 16:48] = 255
    return Image.fromarray(picture)


@pytest.fixture(scope="module")
def inpaint_pipe(tiny_inpaint):
    """The tiny inpainting model (9-channel UNet) on ONNX Runtime (fp32)."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_inpaint[1], backend="onnxruntime")


def masked_call(pipe, image, s: StreamSettings):
    """The single-image call a masked stream frame stands for."""
    return pipe(
        s.prompt, image, strength=s.strength, num_inference_steps=s.steps,
        guidance_scale=s.guidance, seed=s.seed, scheduler=s.sampler, **s.mask,
    )[0]  # fmt: skip


def outputs(engine, frames):
    """Every output of `frames` (tags 0, 1, ...), in order."""
    outs = [engine.push(frame, k) for k, frame in enumerate(frames)]
    return [out for out in outs if out is not None] + engine.flush()


@pytest.mark.parametrize(
    "model,strength", [("tiny_pipe", 0.6), ("inpaint_pipe", 0.6), ("inpaint_pipe", 1.0)]
)
def test_a_masked_frame_equals_the_single_masked_call(request, frames, mask, model, strength):
    pipe = request.getfixturevalue(model)
    s = StreamSettings("a cat", strength=strength, steps=4, guidance=3.0, sampler="euler",
                       seed=3, mask={"mask_image": mask})  # fmt: skip
    outs = outputs(StreamEngine(pipe, s), [frames[0], frames[0], frames[1]])
    for out, frame in zip(outs, [frames[0], frames[0], frames[1]], strict=True):
        assert psnr(out.image, masked_call(pipe, frame, s)) >= 40
        assert out.image.info["fastimg:mask"] == "given"
    everything = mask.point(lambda v: 255)
    unmasked = pipe("a cat", frames[0], strength=strength, num_inference_steps=4, seed=3,
                    guidance_scale=3.0, scheduler="euler", mask_image=everything)[0]  # fmt: skip
    assert psnr(outs[0].image, unmasked) < 40  # (the mask shows)


@pytest.mark.parametrize("model", ["tiny_pipe", "inpaint_pipe"])
@pytest.mark.parametrize("sampler", ["lcm", "euler_a"])
def test_stream_batch_with_a_mask_gives_each_frame_its_masked_call(request, frames, mask, model,
                                                                    sampler):  # fmt: skip
    pipe = request.getfixturevalue(model)
    shaping = {"mask_image": mask, "mask_invert": True, "mask_blur": 3, "keep_unmasked": True}
    s = StreamSettings("a cat", strength=0.75, steps=4, guidance=2.0, sampler=sampler, seed=4,
                       stream_batch=True, mask=shaping)  # fmt: skip
    unet = CountingSession(pipe.sessions["unet"])
    pipe.sessions["unet"], original = unet, pipe.sessions["unet"]
    try:
        outs = outputs(StreamEngine(pipe, s), frames[:4])
    finally:
        pipe.sessions["unet"] = original
    stages = pipe.plan(sampler, 4, 0.75).steps
    assert unet.rows[stages - 1] == 2 * stages  # (frames at every step in one batch, CFG)
    assert [o.tag for o in outs] == [0, 1, 2, 3]
    for out in outs:  # each frame alone: the single masked call (StreamDiffusion's stages)
        assert psnr(out.image, masked_call(pipe, frames[out.tag], s)) >= 40
        assert out.image.info["fastimg:mask"] == "inverted"


@pytest.mark.parametrize("mode", ["self", "onetime"])
def test_residual_cfg_with_a_mask_puts_the_kept_latents_back(tiny_pipe, frames, mask, mode):
    s = StreamSettings("a cat", "blur", strength=0.75, steps=4, guidance=3.0, sampler="lcm",
                       seed=4, stream_batch=True, rcfg=mode, mask={"mask_image": mask})  # fmt: skip
    engine = StreamEngine(tiny_pipe, s)
    outs = outputs(engine, [frames[0]] * 3)
    assert [o.tag for o in outs] == [0, 1, 2]
    # after its last step a plain UNet's frame keeps the frame's own clean latents where the
    # mask is black (diffusers' inpainting: the kept region put back with that step's noise)
    z = tiny_pipe.encode_image(images.to_pixels(frames[0], 8), TorchCompatibleGenerator(4))
    keep = to_latent_size(binarize(mask, 48, 64)[None, None], 6, 8) < 0.5
    keep = np.broadcast_to(keep, z.shape)
    x = engine._last_latents
    np.testing.assert_array_equal(x[keep], z[keep])
    assert np.abs(x[~keep] - z[~keep]).mean() > 0.1  # (the masked region was repainted)


def test_only_masked_is_refused_in_a_stream(tiny_pipe, mask):
    s = StreamSettings("a cat", mask={"mask_image": mask, "padding_mask_crop": 32})
    with pytest.raises(InputError, match="padding_mask_crop"):
        StreamEngine(tiny_pipe, s)


def test_an_empty_mask_is_refused_when_the_stream_starts(tiny_pipe, mask):
    black = Image.new("L", mask.size, 0)
    with pytest.raises(InputError, match="the mask is empty"):
        StreamEngine(tiny_pipe, StreamSettings("a cat", mask={"mask_image": black}))
    inverted = {"mask_image": mask.point(lambda v: 255), "mask_invert": True}
    with pytest.raises(InputError, match="the mask is empty"):
        StreamEngine(tiny_pipe, StreamSettings("a cat", mask=inverted))


def test_an_inpainting_folder_needs_a_mask_in_a_stream(inpaint_pipe):
    with pytest.raises(InputError, match="needs a mask"):
        StreamEngine(inpaint_pipe, StreamSettings("a cat"))


def test_a_mask_and_a_controlnet_together_on_the_stream_batch(tiny_inpaint_controlnet, frames,
                                                              mask):  # fmt: skip
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_inpaint_controlnet[1], backend="onnxruntime")
    control = {"control_preprocess": "canny", "controlnet_conditioning_scale": 1.5,
               "control_guidance_end": 0.6}  # fmt: skip
    s = StreamSettings("a cat", strength=0.75, steps=4, guidance=2.0, sampler="euler", seed=4,
                       stream_batch=True, mask={"mask_image": mask}, control=control)  # fmt: skip
    outs = outputs(StreamEngine(pipe, s), frames[:4])
    assert [o.tag for o in outs] == [0, 1, 2, 3]
    for out in outs:  # the 9-channel UNet's rows, each steered by its own frame's edges
        frame = frames[out.tag]
        alone = pipe("a cat", frame, strength=0.75, num_inference_steps=4, seed=4, mask_image=mask,
                     guidance_scale=2.0, scheduler="euler", **control)[0]  # fmt: skip
        assert psnr(out.image, alone) >= 40
    plain = masked_call(pipe, frames[0], s)
    assert psnr(outs[0].image, plain) < 40  # (the control shows)


@pytest.mark.parametrize("model,stream_batch", [("tiny_pipe", False), ("inpaint_pipe", True)])
def test_the_mask_is_blurred_and_binarized_once_and_each_frame_filled_as_its_call(
    request, frames, mask, model, stream_batch, monkeypatch
):
    from fastimg.diffusion import masks

    pipe = request.getfixturevalue(model)
    made = []
    real = masks.mask_picture
    monkeypatch.setattr(masks, "mask_picture", lambda *a: made.append(1) or real(*a))
    given = {"mask_image": mask, "mask_blur": 3, "keep_unmasked": True, "masked_content": "fill"}
    s = StreamSettings("a cat", strength=0.6, steps=2, sampler="euler", seed=3, mask=given,
                       stream_batch=stream_batch)  # fmt: skip
    engine = StreamEngine(pipe, s)
    first = engine.push(frames[0], 0)
    once = len(made)  # (the start's check that it repaints something, the first frame's)
    outs = [first] * (first is not None) + outputs(engine, [frames[1], frames[0]])
    assert len(made) == once and len(outs) == 3
    for out, frame in zip(outs, [frames[0], frames[1], frames[0]], strict=True):
        # the masked region filled from each frame's own pixels before it is encoded
        assert psnr(out.image, masked_call(pipe, frame, s)) >= 40
