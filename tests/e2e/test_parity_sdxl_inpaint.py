"""fastimg's SDXL inpainting against diffusers' StableDiffusionXLInpaintPipeline, same seed,
same settings: on tiny-sdxl-inpaint (9-channel UNet), and on the plain tiny SDXL base and
refiner (4-channel UNets: the kept region put back after each step)."""

import numpy as np
import pytest
from PIL import Image

from fastimg.backends.select import installed
from fastimg.diffusion import schedules
from fastimg.media.images import psnr

from .test_parity import MIN_PSNR, exact, record, reference, run_reference

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# The exact path lands at 82 dB or more (or identical), as SD's inpainting does.
EXACT_PSNR = 60.0
SETTINGS = dict(prompt="a red fox in the snow", num_inference_steps=4, num_images_per_prompt=2)


@pytest.fixture(scope="module")
def mask():
    """The photo's size (90 x 68): a white block to repaint, soft values around it that the
    binarizing at 0.5 must cut alike, black elsewhere."""
    values = np.zeros((68, 90), np.float32)
    values[10:50, 30:80] = 1.0
    values[10:50, 20:30] = np.linspace(0.2, 0.9, 10)[None, :]
    return Image.fromarray((values * 255).round().astype(np.uint8))


def _inpaint_reference(model):
    """diffusers' SDXL inpainting pipeline on the model (an img2img folder's components)."""
    ref = reference(model)
    if type(ref).__name__ != "StableDiffusionXLInpaintPipeline":
        flags = {k: ref.config[k] for k in ("requires_aesthetics_score",
                                            "force_zeros_for_empty_prompt")}  # fmt: skip
        ref = diffusers.StableDiffusionXLInpaintPipeline(**ref.components, **flags)
        ref.set_progress_bar_config(disable=True)
    return ref


@pytest.fixture(scope="module", params=["tiny_sdxl_inpaint", "tiny_sdxl", "tiny_sdxl_refiner"])
def pair(request):
    model, engines = request.getfixturevalue(request.param)
    ref = _inpaint_reference(model)
    return request.param, ref, dict(ref.scheduler.config), exact(engines)


def compare(pair, photo, mask, sampler, seed=11, **settings) -> list:
    """Both pipelines on the same settings and mask; every image must match; ours returned."""
    name, ref, config, ours = pair
    settings = dict(SETTINGS, **settings)
    expected = run_reference(ref, config, sampler, photo, seed=seed, mask_image=mask, height=64,
                             width=88, **settings)  # fmt: skip
    got = ours(image=photo, seed=seed, scheduler=sampler, mask_image=mask, **settings)
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size
        record(model=name, inpaint=True, sampler=sampler, psnr_db=psnr(e, g), **settings)
        print(f"{name} {sampler} {settings}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
    return got


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("strength,guidance", [(0.6, 5.0), (1.0, 1.0), (1.0, 5.0)])
def test_output_matches_diffusers(pair, photo, mask, sampler, strength, guidance):
    got = compare(pair, photo, mask, sampler, strength=strength, guidance_scale=guidance)
    assert got[0].size == (88, 64) and got[0].info["fastimg:mask"] == "given"
    assert psnr(got[0], got[1]) < MIN_PSNR  # fresh noise per image: not vacuous


def test_the_mask_matters(pair, photo, mask):
    """Not plain img2img, nor the same with the mask inverted."""
    name, ref, config, ours = pair
    settings = dict(SETTINGS, strength=0.8, guidance_scale=5.0, seed=4, scheduler="euler")
    given = ours(image=photo, mask_image=mask, **settings)[0]
    inverted = ours(image=photo, mask_image=mask, mask_invert=True, **settings)[0]
    assert psnr(given, inverted) < MIN_PSNR - 10
    if name != "tiny_sdxl_inpaint":  # (an inpainting folder needs a mask)
        assert psnr(given, ours(image=photo, **settings)[0]) < MIN_PSNR - 10


def test_blur_only_masked_and_micro_conditioning_match_diffusers(pair, photo, mask):
    """mask_blur (diffusers' mask_processor.blur first), padding_mask_crop with a negative and
    a second prompt, and SDXL's size conditioning (the refiner: aesthetic scores)."""
    name, ref, config, ours = pair
    blurred = ref.mask_processor.blur(mask, blur_factor=3)
    expected = run_reference(ref, config, "euler", photo, seed=5, mask_image=blurred, height=64,
                             width=88, strength=0.7, guidance_scale=5.0, **SETTINGS)  # fmt: skip
    got = ours(image=photo, seed=5, scheduler="euler", mask_image=mask, mask_blur=3,
               strength=0.7, guidance_scale=5.0, **SETTINGS)  # fmt: skip
    for e, g in zip(expected, got, strict=True):
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
    small = np.zeros((68, 90), np.uint8)
    small[24:44, 50:70] = 255
    micro = ({"aesthetic_score": 7.0, "negative_aesthetic_score": 2.0} if "refiner" in name
             else {"original_size": (512, 384), "crops_coords_top_left": (8, 16),
                   "prompt_2": "an oil painting"})  # fmt: skip
    got = compare(
        pair,
        photo,
        Image.fromarray(small),
        "ddim",
        seed=3,
        strength=0.8,
        guidance_scale=5.0,
        negative_prompt="blurry",
        padding_mask_crop=4,
        **micro,
    )
    assert got[0].size == photo.size  # pasted back over the original
    assert np.array_equal(np.asarray(got[0])[:16], np.asarray(photo)[:16])


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_openvino_matches_diffusers(tiny_sdxl_inpaint, photo, mask, strength):
    """The 9-channel SDXL UNet on OpenVINO's exact path."""
    model, engines = tiny_sdxl_inpaint
    ref = _inpaint_reference(model)
    pair = ("tiny_sdxl_inpaint openvino", ref, dict(ref.scheduler.config),
            exact(engines, "openvino"))  # fmt: skip
    compare(pair, photo, mask, "euler", strength=strength, guidance_scale=5.0)
