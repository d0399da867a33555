import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.errors import InputError


@pytest.fixture(scope="module")
def pipe(tiny):
    return Img2ImgPipeline.from_engines(tiny[1])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(strength=0.0), "strength must be in"),
        (dict(strength=1.2), "strength must be in"),
        (dict(num_inference_steps=3, strength=0.2), "zero denoising steps"),
        (dict(guidance_scale=float("nan")), "finite"),
        (dict(guidance_scale=-1.0), "at least 0"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt must be between 1 and 64"),
        (dict(seed=2**32), "seed"),
        (dict(scheduler="pndm"), "unknown scheduler"),
        (dict(prompt=["a", "b"]), "prompt must be a string"),
        (dict(image=42), "PIL image or a path"),
        (dict(num_inference_steps=1001), "more than the 1000 timesteps"),
        (dict(num_inference_steps=1500, strength=1.0), "at most 1000 steps"),
        (dict(num_inference_steps=4.5), "whole number"),
        (dict(guidance_scale="7"), "must be a number"),
        (dict(seed=1.5), "whole number"),
    ],
)
def test_invalid_arguments_raise_input_errors(pipe, photo, kwargs, message):
    args = {**dict(prompt="a cat", image=photo, num_inference_steps=4, strength=0.5), **kwargs}
    with pytest.raises(InputError, match=message):
        pipe(**args)


def test_image_may_be_given_as_a_path(pipe, photo, tmp_path):
    photo.save(tmp_path / "p.png")
    (a,) = pipe("a cat", tmp_path / "p.png", strength=0.5, num_inference_steps=4, seed=1)
    (b,) = pipe("a cat", photo, strength=0.5, num_inference_steps=4, seed=1)
    assert a.tobytes() == b.tobytes()


def test_numpy_numbers_are_accepted_like_python_ones(pipe, photo):
    import numpy as np

    job = dict(prompt="a cat", image=photo, seed=1)
    (plain,) = pipe(strength=0.5, num_inference_steps=4, guidance_scale=5.0, **job)
    (numpy,) = pipe(
        strength=np.float32(0.5),
        num_inference_steps=np.int64(4),
        guidance_scale=np.float64(5.0),
        num_images_per_prompt=np.int32(1),
        **{**job, "seed": np.uint32(1)},
    )
    assert plain.tobytes() == numpy.tobytes()
    assert numpy.info["fastimg:guidance"] == 5.0 and type(numpy.info["fastimg:seed"]) is int


def test_the_seed_drawn_when_none_is_given_is_returned_and_reproduces_the_image(pipe, photo):
    job = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4)
    first, second = pipe(num_images_per_prompt=2, **job)
    seed = first.info["fastimg:seed"]
    assert isinstance(seed, int) and second.info["fastimg:seed"] == seed
    assert [first.info["fastimg:index"], second.info["fastimg:index"]] == [0, 1]
    again = pipe(num_images_per_prompt=2, seed=seed, **job)
    assert [a.tobytes() for a in again] == [first.tobytes(), second.tobytes()]


def test_every_image_says_what_made_it(pipe, photo):
    (image,) = pipe("a cat", photo, strength=0.5, num_inference_steps=4, seed=2)
    assert image.info["fastimg:backend"] == pipe.backend
    assert image.info["fastimg:precision"] == pipe.precision
    assert pipe.exact == (pipe.precision == "fp32")
    assert image.info["fastimg:steps"] == 4 and image.info["fastimg:scheduler"] == "ddim"
