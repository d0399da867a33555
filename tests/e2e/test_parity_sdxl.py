"""fastimg's output against diffusers' StableDiffusionXLImg2ImgPipeline, same seed, same settings,
on the tiny SDXL base and refiner layouts."""

import numpy as np
import pytest

from fastimg.diffusion import schedules
from fastimg.media.images import psnr
from tests.e2e.test_parity import MIN_PSNR, exact, record, reference, run_reference

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base(tiny_sdxl):
    ref = reference(tiny_sdxl[0])
    assert type(ref).__name__ == "StableDiffusionXLImg2ImgPipeline"
    return ref, dict(ref.scheduler.config), exact(tiny_sdxl[1])


@pytest.fixture(scope="module")
def refiner(tiny_sdxl_refiner):
    ref = reference(tiny_sdxl_refiner[0])
    assert ref.text_encoder is None and ref.config.requires_aesthetics_score
    return ref, dict(ref.scheduler.config), exact(tiny_sdxl_refiner[1])


def compare(pair, photo, sampler="euler", seed=11, **settings) -> list:
    """Both pipelines on the same settings; every image must match; ours are returned."""
    ref, config, ours = pair
    settings = {"prompt": "a red fox in the snow", "num_inference_steps": 4, **settings}
    expected = run_reference(ref, config, sampler, photo, seed=seed, **settings)
    got = ours(image=photo, seed=seed, scheduler=sampler, **settings)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size == (88, 64)  # non-square, floored to multiples of 8
        family = ours.manifest.data["model_family"]
        record(model=f"tiny-{family}", sampler=sampler, psnr_db=psnr(e, g), **settings)
        assert psnr(e, g) >= MIN_PSNR, psnr(e, g)
    return got


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
def test_base_matches_diffusers_with_each_sampler(base, photo, sampler):
    # No negative prompt: force_zeros_for_empty_prompt zeroes the negative embeddings and pooled.
    got = compare(base, photo, sampler, strength=0.6, guidance_scale=5.0, num_images_per_prompt=2)
    assert psnr(got[0], got[1]) < MIN_PSNR  # fresh noise per image: not a vacuous comparison


def test_base_negative_prompts_and_second_prompts_match(base, photo):
    settings = dict(strength=0.7, guidance_scale=6.0)
    second = compare(
        base,
        photo,
        negative_prompt="blurry",
        prompt_2="an oil painting",
        negative_prompt_2="low quality",
        **settings,
    )[0]
    empty = compare(base, photo, negative_prompt="", **settings)[0]  # "" is not None: encoded
    ours = base[2]
    zeros = ours("a red fox in the snow", photo, num_inference_steps=4, seed=11, **settings)[0]
    given = ours(
        "a red fox in the snow", photo, num_inference_steps=4, seed=11, negative_prompt="blurry",
        **settings,
    )[0]  # fmt: skip
    for a, b in ((zeros, empty), (empty, given), (given, second)):
        assert psnr(a, b) < MIN_PSNR  # each prompt really reaches the UNet


def test_base_micro_conditioning_matches(base, photo):
    settings = dict(strength=0.5, guidance_scale=4.0)
    sized = compare(
        base,
        photo,
        original_size=(1024, 768),
        crops_coords_top_left=(32, 16),
        target_size=(512, 512),
        **settings,
    )[0]
    plain = base[2]("a red fox in the snow", photo, num_inference_steps=4, seed=11, **settings)
    assert psnr(plain[0], sized) < MIN_PSNR


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_strength_one_matches(base, photo, guidance):
    compare(base, photo, "euler_a", strength=1.0, guidance_scale=guidance, num_inference_steps=2)


def test_refiner_matches_with_its_aesthetic_scores(refiner, photo):
    settings = dict(strength=0.5, guidance_scale=5.0)
    plain = compare(refiner, photo, **settings)[0]  # no force_zeros: "" is encoded
    scored = compare(
        refiner,
        photo,
        negative_prompt="blurry",
        aesthetic_score=8.0,
        negative_aesthetic_score=1.0,
        crops_coords_top_left=(8, 8),
        original_size=(256, 384),
        **settings,
    )[0]
    assert psnr(plain, scored) < MIN_PSNR
    assert np.asarray(scored).std() > 10


@pytest.mark.parametrize("steps,strength", [(1, 1.0), (2, 0.5)])
def test_turbo_layout_matches_in_one_or_two_steps(tiny_sdxl_turbo, photo, steps, strength):
    ref = reference(tiny_sdxl_turbo[0])
    assert type(ref.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    settings = dict(prompt="a cat", strength=strength, num_inference_steps=steps)
    expected = ref(
        image=photo, generator=torch.Generator("cpu").manual_seed(9), guidance_scale=0.0, **settings
    ).images[0]  # the model's own sampler, trailing spacing, no CFG: as sdxl-turbo is run
    got = exact(tiny_sdxl_turbo[1])(image=photo, seed=9, guidance_scale=0.0, **settings)[0]
    assert got.info["fastimg:scheduler"] == "euler_a"
    assert psnr(expected, got) >= MIN_PSNR


def test_taesdxl_in_place_of_the_vae_matches_diffusers_with_autoencoder_tiny(
    tiny_sdxl_taesdxl, photo
):
    import json

    model, engines = tiny_sdxl_taesdxl
    ref = reference(model)
    ref.vae = diffusers.AutoencoderTiny.from_pretrained(model.parent / "taesdxl")
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["vae"]["kind"] == "tiny" and manifest["vae_scaling_factor"] == 1.0
    assert manifest["components"]["vae_decoder"]["precision"] == "fp32"
    pair = (ref, dict(ref.scheduler.config), exact(engines))
    compare(pair, photo, "euler_a", strength=0.6, guidance_scale=5.0, num_images_per_prompt=2)
    compare(pair, photo, "euler", strength=1.0, guidance_scale=0.0)
