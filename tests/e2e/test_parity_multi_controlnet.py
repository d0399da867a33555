"""Several ControlNets at once against diffusers' StableDiffusionControlNetImg2ImgPipeline with
a MultiControlNetModel, same seed, same settings, on tiny-multi-controlnet (two random
ControlNets whose output convolutions are not zero): the residuals summed as diffusers does."""

import numpy as np
import pytest
from PIL import Image

from fastimg.backends.select import installed
from fastimg.media.images import psnr

from .test_parity import MIN_PSNR, exact, record, reference, run_reference

torch = pytest.importorskip("torch")

OPENVINO = pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")


def lines(seed: int) -> Image.Image:
    """A deterministic edge-like image of the photo's size (floored alike to 88 x 64)."""
    rng = np.random.default_rng(seed)
    on = (rng.random((68, 90)) > 0.85).astype(np.float32)
    return Image.fromarray((np.stack([on] * 3, axis=-1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def controls():
    return [lines(5), lines(6)]


@pytest.fixture(scope="module", params=["onnxruntime", pytest.param("openvino", marks=OPENVINO)])
def pair(request, tiny_multi_controlnet):
    model, engines = tiny_multi_controlnet
    ref = reference(model)
    assert type(ref.controlnet).__name__ == "MultiControlNetModel"
    assert len(ref.controlnet.nets) == 2
    return request.param, ref, dict(ref.scheduler.config), exact(engines, request.param)


SETTINGS = dict(prompt="a red fox in the snow", strength=0.8, num_inference_steps=10,
                negative_prompt="blurry", num_images_per_prompt=2)  # fmt: skip


SCALES = dict(controlnet_conditioning_scale=[0.5, 1.0])
WINDOWS = dict(
    controlnet_conditioning_scale=1.5, control_guidance_start=[0.0, 0.3],
    control_guidance_end=[0.6, 1.0],
)  # fmt: skip


# Every pair of sampler, guidance and control (and each with each backend) in 4 of their 8
# combinations a backend: each case runs diffusers and two of ours, ten steps each.
@pytest.mark.parametrize(
    "sampler,guidance,control",
    [("ddim", 1.0, SCALES), ("ddim", 7.5, WINDOWS), ("euler", 1.0, WINDOWS),
     ("euler", 7.5, SCALES)],
    ids=["ddim-1.0-scales", "ddim-7.5-windows", "euler-1.0-windows", "euler-7.5-scales"],
)  # fmt: skip
def test_two_controlnets_match_diffusers(pair, photo, controls, sampler, guidance, control):
    backend, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=guidance)
    expected = run_reference(ref, config, sampler, photo, seed=11, control_image=controls,
                             **control, **settings)  # fmt: skip
    got = ours(image=photo, seed=11, scheduler=sampler, control_image=controls, **control,
               **settings)  # fmt: skip
    first_only = ours(image=photo, seed=11, scheduler=sampler, control_image=controls[:1],
                      **{k: v[0] if isinstance(v, list) else v for k, v in control.items()},
                      **settings)  # fmt: skip
    for e, g, f in zip(expected, got, first_only, strict=True):
        assert g.size == e.size == (88, 64)
        record(model="tiny-multi-controlnet", backend=backend, sampler=sampler,
               guidance=guidance, control=str(control), psnr_db=psnr(e, g),
               second_controlnet_effect_db=psnr(g, f))  # fmt: skip
        print(f"{backend} {sampler} cfg {guidance} {control}: {psnr(e, g):.1f} dB against "
              f"diffusers, {psnr(g, f):.1f} dB against the first ControlNet alone")  # fmt: skip
        assert psnr(e, g) >= MIN_PSNR
        # The second ControlNet changes the image: its residuals are not dropped.
        assert psnr(g, f) < MIN_PSNR - 5


def test_the_images_are_labelled_per_controlnet(pair, photo, controls):
    backend, ref, config, ours = pair
    (image,) = ours(image=photo, seed=1, prompt="a fox", num_inference_steps=3,
                    control_image=controls, controlnet_conditioning_scale=[0.5, 1.0])  # fmt: skip
    assert image.info["fastimg:control_scale"] == [0.5, 1.0]
    assert image.info["fastimg:control_start"] == [0.0, 0.0]
    assert image.info["fastimg:control_model"] == ["model", "model"]
    (one,) = ours(image=photo, seed=1, prompt="a fox", num_inference_steps=3,
                  control_image=controls[:1])  # fmt: skip
    assert one.info["fastimg:control_scale"] == 0.8 and one.info["fastimg:control_model"] == "model"
