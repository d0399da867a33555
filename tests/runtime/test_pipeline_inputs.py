import pytest

from fastimg.errors import InputError
from fastimg.pipeline import Img2ImgPipeline


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
        (dict(num_images_per_prompt=0), "number of images"),
        (dict(seed=2**32), "seed"),
        (dict(scheduler="pndm"), "unknown scheduler"),
        (dict(prompt=["a", "b"]), "prompt must be a string"),
        (dict(image=42), "PIL image or a path"),
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
