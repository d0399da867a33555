"""fastimg's inpainting steered by a ControlNet against diffusers'
StableDiffusionControlNetInpaintPipeline, same seed, same settings: on tiny-controlnet (4-channel
UNet: the kept region put back after each step) and on tiny-inpaint-controlnet (9-channel UNet;
its ControlNet sees the 4 latent channels only)."""

import numpy as np
import pytest
from PIL import Image

from fastimg.backends.select import installed
from fastimg.media.images import psnr

from .test_parity import MIN_PSNR, exact, record, reference, run_reference

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# The exact path lands at 85 dB or more (as without a ControlNet: test_parity_inpaint).
EXACT_PSNR = 60.0
# diffusers' inpainting ControlNet pipeline defaults to 0.5, its img2img one (and fastimg) to 0.8.
SETTINGS = dict(prompt="a red fox in the snow", num_inference_steps=8, negative_prompt="blurry",
                num_images_per_prompt=2, controlnet_conditioning_scale=0.8)  # fmt: skip


@pytest.fixture(scope="module")
def mask():
    """The photo's size (90 x 68): a white block to repaint, black elsewhere."""
    values = np.zeros((68, 90), np.uint8)
    values[10:50, 30:80] = 255
    return Image.fromarray(values)


@pytest.fixture(scope="module", params=["tiny_controlnet", "tiny_inpaint_controlnet"])
def pair(request):
    model, engines = request.getfixturevalue(request.param)
    ref = reference(model)
    if type(ref).__name__ != "StableDiffusionControlNetInpaintPipeline":  # the img2img one's parts
        ref = diffusers.StableDiffusionControlNetInpaintPipeline(**ref.components)
        ref.set_progress_bar_config(disable=True)
    return request.param, ref, dict(ref.scheduler.config), exact(engines)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_output_matches_diffusers(pair, photo, mask, control_image, sampler, guidance, strength):
    name, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=guidance, strength=strength)
    expected = run_reference(ref, config, sampler, photo, seed=11, mask_image=mask, height=64,
                             width=88, control_image=control_image, **settings)  # fmt: skip
    got = ours(image=photo, seed=11, scheduler=sampler, mask_image=mask,
               control_image=control_image, **settings)  # fmt: skip
    masked_only = ours(image=photo, seed=11, scheduler=sampler, mask_image=mask, **settings)
    for e, g, m in zip(expected, got, masked_only, strict=True):
        assert g.size == e.size == (88, 64)
        record(model=name, inpaint=True, control=True, sampler=sampler, guidance=guidance,
               strength=strength, psnr_db=psnr(e, g))  # fmt: skip
        print(f"{name} {sampler} cfg {guidance} strength {strength}: {psnr(e, g):.1f} dB, "
              f"{psnr(g, m):.1f} dB against the mask alone")  # fmt: skip
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
        assert psnr(g, m) < MIN_PSNR - 5  # the ControlNet steers the repainting: not vacuous
    assert got[0].info["fastimg:mask"] == "given" and "fastimg:control_scale" in got[0].info


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m"])
def test_other_samplers_and_a_window_match_diffusers(pair, photo, mask, control_image, sampler):
    name, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.7, control_guidance_start=0.2,
                    control_guidance_end=0.7)  # fmt: skip
    expected = run_reference(ref, config, sampler, photo, seed=4, mask_image=mask, height=64,
                             width=88, control_image=control_image, **settings)  # fmt: skip
    got = ours(image=photo, seed=4, scheduler=sampler, mask_image=mask,
               control_image=control_image, **settings)  # fmt: skip
    for e, g in zip(expected, got, strict=True):
        print(f"{name} {sampler} window 0.2-0.7: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)


@pytest.mark.parametrize("control_size", [(90, 68), (45, 34)])
def test_only_masked_crops_the_control_image_as_diffusers(pair, photo, control_image,
                                                         control_size):  # fmt: skip
    """padding_mask_crop: the control image is cut to the mask's padded box and fills the
    engine's size, as the init image is (diffusers' control_image_processor with crops_coords).
    A control image of another size is brought to the photo's first (diffusers takes only one
    of the photo's size: against it, the same image at the photo's size)."""
    name, ref, config, ours = pair
    values = np.zeros((68, 90), np.uint8)
    values[24:44, 50:70] = 255
    small = Image.fromarray(values)
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.8)
    given = control_image.resize(control_size, resample=Image.LANCZOS)
    at_photo = (
        given.resize(photo.size, resample=Image.LANCZOS) if given.size != photo.size else given
    )
    expected = run_reference(ref, config, "ddim", photo, seed=3, mask_image=small, height=64,
                             width=88, padding_mask_crop=4, control_image=at_photo,
                             **settings)  # fmt: skip
    got = ours(image=photo, seed=3, scheduler="ddim", mask_image=small, padding_mask_crop=4,
               control_image=given, **settings)  # fmt: skip
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size == photo.size
        print(f"{name} only masked, control {control_size}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
        assert np.array_equal(np.asarray(g)[:16], np.asarray(photo)[:16])  # far outside: kept


@pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_openvino_matches_diffusers(tiny_inpaint_controlnet, photo, mask, control_image, strength):
    """The 9-channel UNet taking the ControlNet's residuals, on OpenVINO's exact path."""
    model, engines = tiny_inpaint_controlnet
    ref = reference(model)
    settings = dict(SETTINGS, guidance_scale=7.5, strength=strength)
    expected = run_reference(ref, dict(ref.scheduler.config), "euler", photo, seed=6,
                             mask_image=mask, height=64, width=88, control_image=control_image,
                             **settings)  # fmt: skip
    got = exact(engines, "openvino")(image=photo, seed=6, scheduler="euler", mask_image=mask,
                                     control_image=control_image, **settings)  # fmt: skip
    for e, g in zip(expected, got, strict=True):
        print(f"openvino strength {strength}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_sdxl_with_a_controlnet_and_a_mask_matches_diffusers(
    tiny_sdxl_controlnet, photo, mask, control_image, guidance
):
    """StableDiffusionXLControlNetInpaintPipeline on a plain (4-channel) SDXL folder with a
    ControlNet: the mask's kept region put back after each step, the ControlNet steering."""
    model, engines = tiny_sdxl_controlnet
    parts = reference(model).components
    ref = diffusers.StableDiffusionXLControlNetInpaintPipeline(**parts, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    ours = exact(engines)
    settings = dict(SETTINGS, guidance_scale=guidance, strength=0.7)
    expected = run_reference(ref, dict(ref.scheduler.config), "euler", photo, seed=3,
                             mask_image=mask, height=64, width=88, control_image=control_image,
                             **settings)  # fmt: skip
    got = ours(image=photo, seed=3, scheduler="euler", mask_image=mask,
               control_image=control_image, **settings)  # fmt: skip
    masked_only = ours(image=photo, seed=3, scheduler="euler", mask_image=mask, **settings)
    for e, g, m in zip(expected, got, masked_only, strict=True):
        print(f"sdxl controlnet inpaint cfg {guidance}: {psnr(e, g):.1f} dB, "
              f"{psnr(g, m):.1f} dB against the mask alone")  # fmt: skip
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
        assert psnr(g, m) < MIN_PSNR - 5
