"""The SD-Turbo layout (Euler ancestral, trailing spacing) in 1-2 steps, as people run it."""

import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.mark.parametrize(
    "steps,strength,images",
    [(2, 0.5, 1), (2, 1.0, 1), (1, 1.0, 2), (4, 0.25, 1), (3, 0.7, 2)],
)
def test_turbo_matches_diffusers_in_one_or_two_steps(tiny_turbo, photo, steps, strength, images):
    from tests.e2e.test_parity import reference

    ref = reference(tiny_turbo[0])
    assert type(ref.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    settings = dict(
        prompt="a cat", strength=strength, num_inference_steps=steps, guidance_scale=0.0
    )
    expected = ref(
        image=photo,
        generator=torch.Generator("cpu").manual_seed(9),
        num_images_per_prompt=images,
        **settings,
    ).images
    ours = Img2ImgPipeline.from_engines(tiny_turbo[1], backend="onnxruntime", precision="fp32")
    got = ours(image=photo, seed=9, num_images_per_prompt=images, **settings)
    assert len(got) == images
    for e, g in zip(expected, got, strict=True):
        assert psnr(e, g) >= 40.0
