"""fastimg's ControlNet img2img against diffusers' StableDiffusionControlNetImg2ImgPipeline,
same seed, same settings, on the tiny-controlnet model (random, non-zero zero convolutions)."""

import numpy as np
import pytest

from fastimg.backends.select import installed
from fastimg.media.images import psnr

from .test_parity import MIN_PSNR, exact, record, reference, run_reference

torch = pytest.importorskip("torch")

OPENVINO = pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")


@pytest.fixture(scope="module", params=["onnxruntime", pytest.param("openvino", marks=OPENVINO)])
def pair(request, tiny_controlnet):
    model, engines = tiny_controlnet
    ref = reference(model)
    assert type(ref).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    return request.param, ref, dict(ref.scheduler.config), exact(engines, request.param)


SETTINGS = dict(prompt="a red fox in the snow", strength=0.8, num_inference_steps=10,
                negative_prompt="blurry", num_images_per_prompt=2)  # fmt: skip


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("scale,start,end", [(0.5, 0.0, 1.0), (1.0, 0.2, 0.7)])
def test_output_matches_diffusers(pair, photo, control_image, sampler, guidance, scale, start,
                                  end):  # fmt: skip
    backend, ref, config, ours = pair
    control = dict(controlnet_conditioning_scale=scale, control_guidance_start=start,
                   control_guidance_end=end)  # fmt: skip
    settings = dict(SETTINGS, guidance_scale=guidance)
    expected = run_reference(ref, config, sampler, photo, seed=11, control_image=control_image,
                             **control, **settings)  # fmt: skip
    got = ours(image=photo, seed=11, scheduler=sampler, control_image=control_image, **control,
               **settings)  # fmt: skip
    plain = ours(image=photo, seed=11, scheduler=sampler, **settings)
    for e, g, p in zip(expected, got, plain, strict=True):
        assert g.size == e.size == (88, 64)
        record(model="tiny-controlnet", backend=backend, sampler=sampler, guidance=guidance,
               control=[scale, start, end], psnr_db=psnr(e, g),
               control_effect_db=psnr(g, p))  # fmt: skip
        print(
            f"{backend} {sampler} cfg {guidance} control {scale} {start}-{end}: "
            f"{psnr(e, g):.1f} dB against diffusers, {psnr(g, p):.1f} dB against no control"
        )
        assert psnr(e, g) >= MIN_PSNR
        # The ControlNet changes the image: the comparison is not vacuous.
        assert psnr(g, p) < MIN_PSNR - 5


def test_scale_zero_or_no_control_image_is_plain_img2img(pair, photo, control_image):
    backend, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=7.5, seed=3, scheduler="ddim")
    plain = ours(image=photo, **settings)
    zero = ours(image=photo, control_image=control_image, controlnet_conditioning_scale=0.0,
                **settings)  # fmt: skip
    for p, z in zip(plain, zero, strict=True):
        assert np.array_equal(np.asarray(p), np.asarray(z))


def test_the_control_defaults_are_diffusers_img2img_defaults(pair, photo, control_image):
    backend, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=7.5)  # no scale, start or end on either side
    expected = run_reference(ref, config, "ddim", photo, seed=5, control_image=control_image,
                             **settings)  # fmt: skip
    got = ours(image=photo, seed=5, scheduler="ddim", control_image=control_image, **settings)
    for e, g in zip(expected, got, strict=True):
        assert psnr(e, g) >= MIN_PSNR  # (diffusers' img2img scale is 0.8, its txt2img's 1.0)
