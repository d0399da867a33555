"""fastimg's inpainting against diffusers' StableDiffusionInpaintPipeline, same seed, same
settings: on the plain tiny model (4-channel UNet: the kept region put back after each step)
and on tiny-inpaint (9-channel UNet: latents, mask, masked image latents)."""

import numpy as np
import pytest
from PIL import Image

from fastimg.backends.select import installed
from fastimg.diffusion.masks import mask_picture
from fastimg.media.images import psnr

from .test_parity import MIN_PSNR, exact, record, reference, run_reference

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

OPENVINO = pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")


@pytest.fixture(scope="module")
def mask():
    """The photo's size (90 x 68): a white block to repaint, soft values around it that the
    binarizing at 0.5 must cut alike, black elsewhere."""
    values = np.zeros((68, 90), np.float32)
    values[10:50, 30:80] = 1.0
    values[10:50, 20:30] = np.linspace(0.2, 0.9, 10)[None, :]
    return Image.fromarray((values * 255).round().astype(np.uint8))


@pytest.fixture(
    scope="module",
    params=[
        ("tiny", "onnxruntime"),
        ("tiny_inpaint", "onnxruntime"),
        pytest.param(("tiny_inpaint", "openvino"), marks=OPENVINO),
    ],  # fmt: skip
    ids=lambda p: "-".join(p),
)
def pair(request):
    name, backend = request.param
    model, engines = request.getfixturevalue(name)
    ref = reference(model)
    if type(ref).__name__ != "StableDiffusionInpaintPipeline":  # the plain model's parts
        ref = diffusers.StableDiffusionInpaintPipeline(**ref.components)
        ref.set_progress_bar_config(disable=True)
    return f"{name} {backend}", ref, dict(ref.scheduler.config), exact(engines, backend)


# The exact path lands at 85 dB or more; a start at strength 1 that is img2img's (the image
# noised to the first step) instead of diffusers' inpainting one (pure noise x init_noise_sigma)
# still gives 46 dB on this random model, so MIN_PSNR alone would not tell them apart.
EXACT_PSNR = 60.0

SETTINGS = dict(prompt="a red fox in the snow", num_inference_steps=10,
                negative_prompt="blurry", num_images_per_prompt=2)  # fmt: skip


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_output_matches_diffusers(pair, photo, mask, sampler, guidance, strength):
    name, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=guidance, strength=strength)
    expected = run_reference(ref, config, sampler, photo, seed=11, mask_image=mask, height=64,
                             width=88, **settings)  # fmt: skip
    got = ours(image=photo, seed=11, scheduler=sampler, mask_image=mask, **settings)
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size == (88, 64)
        record(model=name, inpaint=True, sampler=sampler, guidance=guidance, strength=strength,
               psnr_db=psnr(e, g))  # fmt: skip
        print(f"{name} {sampler} cfg {guidance} strength {strength}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
    assert psnr(got[0], got[1]) < MIN_PSNR  # fresh noise per image: not vacuous


def test_the_mask_matters(tiny, photo, mask):
    """Inpainting is not plain img2img: the repainted block differs from plain img2img's, and
    the kept region's latents are the image's, whatever the prompt (another prompt changes
    the repainted block mostly: the decoder's attention block reaches the whole image)."""
    ours = exact(tiny[1])
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6, seed=4, scheduler="ddim")
    plain = np.asarray(ours(image=photo, **settings)[0], dtype=np.float64)
    masked = np.asarray(ours(image=photo, mask_image=mask, **settings)[0], dtype=np.float64)
    other = dict(settings, prompt="a blue whale in the sea")
    other = np.asarray(ours(image=photo, mask_image=mask, **other)[0], dtype=np.float64)
    inside, outside = np.zeros((64, 88), bool), np.zeros((64, 88), bool)
    inside[16:40, 40:72] = True  # well inside the repainted block
    outside[58:, :] = True  # well below it
    change = np.abs(plain - masked).mean(axis=2)
    by_prompt = np.abs(other - masked).mean(axis=2)
    print(f"against plain img2img inside {change[inside].mean():.2f}; another prompt inside "
          f"{by_prompt[inside].mean():.2f}, outside {by_prompt[outside].mean():.2f}")  # fmt: skip
    assert change[inside].mean() > 1.0
    assert by_prompt[inside].mean() > 4 * by_prompt[outside].mean()  # (29 and 5 here)


def test_an_inpainting_unet_uses_the_mask(tiny_inpaint, photo, mask):
    ours = exact(tiny_inpaint[1])
    settings = dict(SETTINGS, guidance_scale=7.5, strength=1.0, seed=4, scheduler="ddim")
    a = ours(image=photo, mask_image=mask, **settings)[0]
    b = ours(image=photo, mask_image=Image.fromarray(255 - np.asarray(mask)), **settings)[0]
    assert psnr(a, b) < MIN_PSNR - 10


def test_mask_invert_swaps_what_is_repainted(tiny, photo, mask):
    ours = exact(tiny[1])
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6, seed=4, scheduler="ddim")
    inverted = Image.fromarray(255 - np.asarray(mask))
    a = ours(image=photo, mask_image=mask, mask_invert=True, **settings)[0]
    b = ours(image=photo, mask_image=inverted, **settings)[0]
    assert psnr(a, b) >= MIN_PSNR


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m"])
def test_other_samplers_match_diffusers(tiny, photo, mask, sampler):
    """euler_a draws from the generator in its loop: after the masked image's draw, which a
    plain UNet's call makes for nothing, as diffusers does."""
    model, engines = tiny
    ref = diffusers.StableDiffusionInpaintPipeline(**reference(model).components)
    ref.set_progress_bar_config(disable=True)
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6)
    expected = run_reference(ref, dict(ref.scheduler.config), sampler, photo, seed=7,
                             mask_image=mask, height=64, width=88, **settings)  # fmt: skip
    got = exact(engines)(image=photo, seed=7, scheduler=sampler, mask_image=mask, **settings)
    for e, g in zip(expected, got, strict=True):
        assert psnr(e, g) >= MIN_PSNR


@pytest.mark.parametrize("name", ["tiny", "tiny_inpaint"])
def test_batched_masked_calls_are_the_calls_alone(request, photo, mask, name):
    ours = exact(request.getfixturevalue(name)[1])
    other = Image.fromarray(255 - np.asarray(mask))
    calls = [dict(SETTINGS, image=photo, mask_image=m, seed=s, guidance_scale=7.5,
                  strength=0.6, scheduler="ddim") for m, s in ((mask, 1), (other, 2))]  # fmt: skip
    batched = ours.call_many(calls)
    for call, images in zip(calls, batched, strict=True):
        for alone, together in zip(ours(**call), images, strict=True):
            assert psnr(alone, together) >= MIN_PSNR


@pytest.mark.parametrize("name", ["tiny", "tiny_inpaint"])
def test_batched_calls_fill_each_its_own_masked_content(request, photo, mask, name):
    """call_many batches calls of different masked_content: each image is its call's alone."""
    ours = exact(request.getfixturevalue(name)[1])
    contents = ("latent_noise", None, "latent_nothing")
    calls = [dict(SETTINGS, image=photo, mask_image=mask, seed=4, guidance_scale=7.5,
                  strength=0.6, scheduler="ddim", masked_content=c) for c in contents]  # fmt: skip
    batched = ours.call_many(calls)
    for call, images in zip(calls, batched, strict=True):
        for alone, together in zip(ours(**call), images, strict=True):
            assert psnr(alone, together) >= EXACT_PSNR
    assert psnr(batched[0][0], batched[1][0]) < MIN_PSNR  # (same seed: only the fill differs)


@pytest.fixture(scope="module")
def small_mask():
    """A 20 x 20 block to repaint, away from the edges: its padded box is a small crop."""
    values = np.zeros((68, 90), np.uint8)
    values[24:44, 50:70] = 255
    return Image.fromarray(values)


@pytest.mark.parametrize("size", [(180, 136), (45, 34)])
def test_a_blurred_mask_of_another_size_matches_diffusers(pair, photo, mask, size):
    """mask_blur is diffusers' mask_processor.blur on the mask as given (here at twice and
    half the image's size), before the pipeline resizes and binarizes it."""
    name, ref, config, ours = pair
    other = mask.resize(size, resample=Image.BILINEAR)
    blurred = ref.mask_processor.blur(other, blur_factor=3)
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6)
    expected = run_reference(ref, config, "euler", photo, seed=5, mask_image=blurred,
                             height=64, width=88, **settings)  # fmt: skip
    got = ours(image=photo, seed=5, scheduler="euler", mask_image=other, mask_blur=3, **settings)
    unblurred = ours(image=photo, seed=5, scheduler="euler", mask_image=other, **settings)
    for e, g, u in zip(expected, got, unblurred, strict=True):
        print(f"{name} mask {size} blurred: {psnr(e, g):.1f} dB (unblurred {psnr(e, u):.1f})")
        assert g.size == (88, 64) and psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
    assert got[0].info["fastimg:mask_blur"] == 3


@pytest.mark.parametrize("sampler,strength", [("ddim", 0.6), ("ddim", 1.0), ("euler_a", 0.6)])
def test_only_masked_with_padding_matches_diffusers(pair, photo, small_mask, sampler, strength):
    """padding_mask_crop: the masked block's padded box (widened to 88:64) transformed at
    88 x 64 and pasted back over the 90 x 68 original through the blurred mask."""
    name, ref, config, ours = pair
    blurred = ref.mask_processor.blur(small_mask, blur_factor=2)
    settings = dict(SETTINGS, guidance_scale=7.5, strength=strength)
    expected = run_reference(ref, config, sampler, photo, seed=3, mask_image=blurred, height=64,
                             width=88, padding_mask_crop=4, **settings)  # fmt: skip
    got = ours(image=photo, seed=3, scheduler=sampler, mask_image=small_mask, mask_blur=2,
               padding_mask_crop=4, **settings)  # fmt: skip
    original = np.asarray(photo)
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size == photo.size  # the original's, not the engine's
        print(f"{name} only masked, {sampler} strength {strength}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
        ours_pixels = np.asarray(g)
        assert np.array_equal(ours_pixels[:16], original[:16])  # far outside the box: kept
        assert np.abs(ours_pixels[28:40, 54:66].astype(int) - original[28:40, 54:66]).mean() > 5
    assert got[0].info["fastimg:mask_padding"] == 4
    assert psnr(got[0], got[1]) < MIN_PSNR


@pytest.mark.parametrize("name", ["tiny", "tiny_inpaint"])
def test_keep_unmasked_pastes_the_original_back_outside_the_mask(request, photo, mask, name):
    """Outside the (blurred) mask the output is the input exactly with keep_unmasked, and
    not without (the VAE's round trip; slightly off on a trained VAE); inside, the same
    repainted pixels either way.
    Against diffusers: its output through apply_overlay with the blurred mask."""
    model, engines = request.getfixturevalue(name)
    ours = exact(engines)
    image, given = photo.crop((0, 0, 88, 64)), mask.crop((0, 0, 88, 64))  # the engine's size
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6, seed=2, scheduler="ddim")
    kept = ours(image=image, mask_image=given, mask_blur=2, keep_unmasked=True, **settings)
    plain = ours(image=image, mask_image=given, mask_blur=2, **settings)
    blurred = np.asarray(mask_picture(given, 2))
    outside, inside = blurred == 0, blurred == 255
    source = np.asarray(image)
    for k, p in zip(kept, plain, strict=True):
        k, p = np.asarray(k), np.asarray(p)
        assert outside.sum() > 2000 and inside.sum() > 1000
        assert np.array_equal(k[outside], source[outside])
        drift = np.abs(p[outside].astype(int) - source[outside]).mean()
        print(f"{name}: outside the mask without keep_unmasked, {drift:.2f} levels off")
        assert drift > 0.5  # (a random tiny VAE is far from the identity: 70 levels here)
        assert np.array_equal(k[inside], p[inside])
    assert kept[0].info["fastimg:keep_unmasked"] is True
    ref = reference(model)
    if type(ref).__name__ != "StableDiffusionInpaintPipeline":
        ref = diffusers.StableDiffusionInpaintPipeline(**ref.components)
        ref.set_progress_bar_config(disable=True)
    soft = ref.mask_processor.blur(given, blur_factor=2)
    call = {k: v for k, v in settings.items() if k not in ("seed", "scheduler")}
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", image, seed=2,
                             mask_image=soft, height=64, width=88, **call)  # fmt: skip
    for e, k in zip(expected, kept, strict=True):
        assert psnr(ref.image_processor.apply_overlay(soft, image, e), k) >= EXACT_PSNR


@pytest.mark.parametrize("strength,guidance", [(0.6, 1.0), (0.5, 5.0), (1.0, 5.0)])
def test_an_lcm_distilled_unet_inpaints_as_diffusers(tiny_lcm, photo, mask, strength, guidance):
    """StableDiffusionInpaintPipeline with the LCM's scheduler: guided by its timestep_cond,
    no CFG batch, and the steps cut from the whole schedule by the strength (not the
    LatentConsistencyModelImg2ImgPipeline's schedule the strength cuts, as without a mask)."""
    model, engines = tiny_lcm
    ref = diffusers.StableDiffusionInpaintPipeline(**reference(model).components)
    ref.set_progress_bar_config(disable=True)
    settings = dict(prompt="a red fox in the snow", num_inference_steps=4, strength=strength,
                    guidance_scale=guidance, num_images_per_prompt=2)  # fmt: skip
    expected = run_reference(ref, dict(ref.scheduler.config), "lcm", photo, seed=3,
                             mask_image=mask, height=64, width=88, **settings)  # fmt: skip
    ours = exact(engines)
    got = ours(image=photo, seed=3, scheduler="lcm", mask_image=mask, **settings)
    for e, g in zip(expected, got, strict=True):
        print(f"tiny-lcm strength {strength} guidance {guidance}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
    plain = ours(image=photo, seed=3, scheduler="lcm", **settings)[0]
    assert psnr(got[0], plain) < MIN_PSNR  # the mask changes the run


@pytest.mark.parametrize("strength,guidance", [(0.6, 1.0), (0.5, 5.0), (1.0, 5.0)])
def test_an_lcm_distilled_inpainting_unet_inpaints_as_diffusers(tiny_lcm_inpaint, photo, mask,
                                                                 strength, guidance):  # fmt: skip
    """tiny-lcm-inpaint, a 9-channel LCM-distilled UNet (timestep_cond), exported and run as
    StableDiffusionInpaintPipeline with its LCMScheduler runs it: no CFG batch, the mask and
    the masked image's latents beside the latents, strength 1 starting from noise alone."""
    model, engines = tiny_lcm_inpaint
    ref = reference(model)
    assert type(ref).__name__ == "StableDiffusionInpaintPipeline"
    assert ref.unet.config.in_channels == 9 and ref.unet.config.time_cond_proj_dim is not None
    settings = dict(prompt="a red fox in the snow", num_inference_steps=4, strength=strength,
                    guidance_scale=guidance, num_images_per_prompt=2)  # fmt: skip
    expected = run_reference(ref, dict(ref.scheduler.config), "lcm", photo, seed=5,
                             mask_image=mask, height=64, width=88, **settings)  # fmt: skip
    ours = exact(engines)
    assert "timestep_cond" in ours.conditioning and ours.manifest.inpainting
    got = ours(image=photo, seed=5, scheduler="lcm", mask_image=mask, **settings)
    for e, g in zip(expected, got, strict=True):
        record(model="tiny-lcm-inpaint", inpaint=True, sampler="lcm", guidance=guidance,
               strength=strength, psnr_db=psnr(e, g))  # fmt: skip
        print(f"tiny-lcm-inpaint strength {strength} guidance {guidance}: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
    assert psnr(got[0], got[1]) < MIN_PSNR  # fresh noise per image: not vacuous
    other = ours(image=photo, seed=5, scheduler="lcm", mask_image=mask,
                 **dict(settings, guidance_scale=guidance + 3.0))  # fmt: skip
    # the guidance reaches the UNet (timestep_cond; on this random UNet it moves little)
    assert not np.array_equal(np.asarray(got[0]), np.asarray(other[0]))


def run_a1111_latent_fill(pair, photo, mask, content, sampler, seed, **settings):
    """diffusers' inpainting with A1111's init_latent fill (inpainting_fill 2 or 3,
    StableDiffusionProcessingImg2Img.init) done on the image's latents before prepare_latents
    noises them: A1111's noise is the image's seed's first draw, the starting noise."""
    from fastimg_export.loading import diffusers_scheduler

    _, ref, config, _ = pair
    ref.scheduler = diffusers_scheduler(config, sampler)
    binary = ref.mask_processor.preprocess(mask, height=64, width=88)
    latmask = torch.nn.functional.interpolate(binary, size=(8, 11))  # 1: repainted
    plain, calls = ref.scheduler.add_noise, []

    def add_noise(init_latent, noise, timesteps):
        if not calls:  # prepare_latents' (a plain UNet's later ones noise the kept region)
            keep, nmask = 1.0 - latmask, latmask  # A1111's self.mask and self.nmask
            if content == "latent_noise":
                init_latent = init_latent * keep + noise * nmask
            else:
                init_latent = init_latent * keep
        calls.append(timesteps)
        return plain(init_latent, noise, timesteps)

    ref.scheduler.add_noise = add_noise
    generator = torch.Generator("cpu").manual_seed(seed)
    return ref(image=photo, mask_image=mask, generator=generator, height=64, width=88,
               **settings).images  # fmt: skip


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
@pytest.mark.parametrize("content", ["latent_noise", "latent_nothing"])
def test_latent_masked_content_is_a1111s_fill_on_diffusers_start(pair, photo, mask, content,
                                                                 sampler):  # fmt: skip
    """masked_content latent_noise and latent_nothing (A1111's inpainting_fill 2 and 3) on a
    plain and an inpainting UNet: diffusers' inpainting, its start latents filled first."""
    name, _, _, ours = pair
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6)
    expected = run_a1111_latent_fill(pair, photo, mask, content, sampler, 11, **settings)
    got = ours(image=photo, seed=11, scheduler=sampler, mask_image=mask, masked_content=content,
               **settings)  # fmt: skip
    original = ours(image=photo, seed=11, scheduler=sampler, mask_image=mask, **settings)
    for e, g, o in zip(expected, got, original, strict=True):
        print(f"{name} {content} {sampler}: {psnr(e, g):.1f} dB, {psnr(g, o):.1f} dB to original")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
        assert psnr(g, o) < MIN_PSNR  # the fill changed the run
    assert got[0].info["fastimg:masked_content"] == content
    at_one = dict(settings, strength=1.0)  # the start is noise alone: nothing to fill
    same = [ours(image=photo, seed=11, scheduler=sampler, mask_image=mask, **at_one, **more)[0]
            for more in ({}, {"masked_content": content})]  # fmt: skip
    assert np.array_equal(np.asarray(same[0]), np.asarray(same[1]))


def test_fill_masked_content_is_diffusers_on_the_filled_image(pair, photo, mask):
    """masked_content fill (A1111's inpainting_fill 0): the image at the engine's size filled
    from around the masked region (masking.fill under the mask) is what diffusers inpaints."""
    from fastimg.diffusion.masked_content import fill

    name, ref, config, ours = pair
    settings = dict(SETTINGS, guidance_scale=7.5, strength=0.6)
    sized = photo.resize((88, 64), resample=Image.LANCZOS)
    filled = fill(sized, mask.resize((88, 64), resample=Image.LANCZOS))
    expected = run_reference(ref, config, "ddim", filled, seed=2, mask_image=mask, height=64,
                             width=88, **settings)  # fmt: skip
    got = ours(image=photo, seed=2, scheduler="ddim", mask_image=mask, masked_content="fill",
               **settings)  # fmt: skip
    ours_filled = ours(image=filled, seed=2, scheduler="ddim", mask_image=mask, **settings)
    for e, g, f in zip(expected, got, ours_filled, strict=True):
        print(f"{name} fill: {psnr(e, g):.1f} dB")
        assert psnr(e, g) >= max(MIN_PSNR, EXACT_PSNR)
        assert np.array_equal(np.asarray(g), np.asarray(f))
