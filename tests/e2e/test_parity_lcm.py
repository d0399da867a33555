"""An LCM-distilled model against diffusers' LatentConsistencyModelImg2ImgPipeline, same seed."""

import numpy as np
import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def lcm_reference(tiny_lcm):
    from fastimg_export.loading import quiet_hub_logging

    quiet_hub_logging()
    pipe = diffusers.LatentConsistencyModelImg2ImgPipeline.from_pretrained(
        str(tiny_lcm[0]), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lcm_ours(tiny_lcm):
    return Img2ImgPipeline.from_engines(tiny_lcm[1], backend="onnxruntime", precision="fp32")


@pytest.mark.parametrize(
    "steps,strength,guidance,images",
    [(4, 0.5, 8.5, 1), (1, 1.0, 1.0, 1), (2, 0.6, 4.0, 2), (8, 0.3, 8.5, 1), (3, 1.0, 0.0, 2)],
)
def test_lcm_matches_latent_consistency_img2img(
    lcm_reference, lcm_ours, photo, steps, strength, guidance, images
):
    settings = dict(num_inference_steps=steps, strength=strength, guidance_scale=guidance)
    expected = lcm_reference(
        prompt="a red fox in the snow",
        image=photo,
        num_images_per_prompt=images,
        generator=torch.Generator("cpu").manual_seed(7),
        **settings,
    ).images
    got = lcm_ours(
        "a red fox in the snow",
        photo,
        num_images_per_prompt=images,
        seed=7,
        scheduler="lcm",
        **settings,
    )
    assert len(got) == len(expected) == images
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size
        assert psnr(e, g) >= MIN_PSNR
    if images > 1:
        assert psnr(got[0], got[1]) < MIN_PSNR  # fresh noise per image: not a vacuous match


def test_an_lcm_model_runs_without_a_guidance_batch(lcm_ours, photo):
    batches = []
    real = lcm_ours.sessions["unet"].run

    def run(feeds):
        batches.append((feeds["sample"].shape[0], feeds["timestep_cond"].shape))
        return real(feeds)

    lcm_ours.sessions["unet"].run = run
    try:
        lcm_ours("a fox", photo, num_inference_steps=4, strength=0.5, guidance_scale=8.5, seed=1)
    finally:
        lcm_ours.sessions["unet"].run = real
    assert batches == [(1, (1, 32))] * 4


def test_the_guidance_embedding_equals_diffusers():
    from fastimg.diffusion.schedules import guidance_embedding

    w = np.array([0.0, 3.5, 7.5], dtype=np.float32)
    ours = guidance_embedding(w, 256)
    ref = diffusers.LatentConsistencyModelImg2ImgPipeline.get_guidance_scale_embedding(
        None, torch.tensor(w), embedding_dim=256
    )
    # The arguments reach several thousand radians, where one float32 step of the argument
    # (4.9e-4 at 7500, from exp rounding differently in NumPy and torch) moves sin as much;
    # most entries agree to float32 precision, and the images match (the test above).
    diff = np.abs(ours - ref.numpy())
    assert diff.max() <= 1e-3 and np.median(diff) <= 1e-6
    odd = guidance_embedding(w, 33)
    assert odd.shape == (3, 33) and not odd[:, -1].any()


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_other_samplers_follow_stable_diffusion_img2img_with_the_guidance_embedding(
    tiny_lcm, lcm_ours, photo, sampler
):
    """StableDiffusionImg2ImgPipeline feeds an LCM UNet timestep_cond and runs no CFG batch."""
    from tests.e2e.test_parity import reference, run_reference

    ref = reference(tiny_lcm[0])
    settings = dict(prompt="a fox", strength=0.6, num_inference_steps=6, guidance_scale=6.0)
    expected = run_reference(ref, dict(ref.scheduler.config), sampler, photo, seed=3, **settings)
    got = lcm_ours(image=photo, seed=3, scheduler=sampler, **settings)
    assert psnr(expected[0], got[0]) >= MIN_PSNR
