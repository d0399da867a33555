"""Several calls run as one batch (Img2ImgPipeline.call_many, what the server batches with):
each call's images are exactly the ones it gets alone."""

import numpy as np
import pytest
from PIL import Image

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.errors import InputError

pytest.importorskip("torch")


def pictures(count: int, size=(80, 64)) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(count)
    ]


def assert_same_as_alone(pipe, calls):
    """call_many's images are pixel for pixel those of each call made alone."""
    together = pipe.call_many(calls)
    assert len(together) == len(calls)
    for call, got in zip(calls, together, strict=True):
        alone = pipe(**call)
        assert len(got) == len(alone) == call.get("num_images_per_prompt", 1)
        for a, b in zip(alone, got, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert a.info == b.info  # the same settings, seed and index
    return together


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m"])
def test_calls_batched_together_give_each_the_images_it_gets_alone(tiny, backend, sampler):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend=backend, precision="fp32")
    a, b, c = pictures(3)
    shared = dict(strength=0.7, num_inference_steps=4, guidance_scale=5.0, scheduler=sampler)
    calls = [
        dict(prompt="a cat", image=a, seed=1, **shared),
        dict(prompt="a dog", image=b, seed=2, negative_prompt="blur", num_images_per_prompt=2,
             **shared),
        dict(prompt="a cow", image=c, seed=3, **shared),
    ]  # fmt: skip
    assert_same_as_alone(pipe, calls)


def test_calls_that_cannot_share_a_batch_run_apart_in_their_order(tiny):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    (a,), (wide,) = pictures(1), pictures(1, size=(96, 64))
    shared = dict(num_inference_steps=3, guidance_scale=3.0, seed=5)
    calls = [
        dict(prompt="x", image=a, strength=0.5, **shared),
        dict(prompt="y", image=wide, strength=0.5, **shared),  # another size
        dict(prompt="z", image=a, strength=0.9, **shared),  # another plan
        dict(prompt="w", image=a, strength=0.5, **{**shared, "guidance_scale": 1.0}),  # no CFG
        dict(prompt="v", image=a, strength=0.5, **shared),  # batched with the first
    ]
    calls_made = []
    run = pipe._run
    pipe._run = lambda group, *rest: calls_made.append(len(group)) or run(group, *rest)
    together = assert_same_as_alone(pipe, calls)
    assert sorted(calls_made[: len(calls_made) - len(calls)]) == [1, 1, 1, 2]
    assert [image.info["fastimg:prompt"] for (image,) in together] == list("xyzwv")


def test_sdxl_conditioning_rows_follow_their_call_in_a_batch(tiny_sdxl, tiny_sdxl_refiner):
    base = Img2ImgPipeline.from_engines(tiny_sdxl[1], backend="onnxruntime", precision="fp32")
    a, b = pictures(2)
    shared = dict(strength=0.6, num_inference_steps=3, guidance_scale=5.0, scheduler="euler")
    assert_same_as_alone(base, [
        dict(prompt="a cat", image=a, seed=1, **shared),  # zero negatives (force_zeros)
        dict(prompt="a dog", image=b, seed=2, negative_prompt="ugly", prompt_2="fur",
             original_size=(512, 384), crops_coords_top_left=(8, 16), **shared),
    ])  # fmt: skip
    refiner = Img2ImgPipeline.from_engines(
        tiny_sdxl_refiner[1], backend="onnxruntime", precision="fp32"
    )
    assert_same_as_alone(refiner, [
        dict(prompt="a cat", image=a, seed=1, aesthetic_score=7.5, **shared),
        dict(prompt="a dog", image=b, seed=2, negative_aesthetic_score=1.0, **shared),
    ])  # fmt: skip


def test_every_call_is_checked_before_any_runs(tiny):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    ran = []
    pipe._run = lambda group, *rest: ran.append(group)
    (a,) = pictures(1)
    with pytest.raises(InputError, match="strength"):
        pipe.call_many([dict(prompt="ok", image=a), dict(prompt="bad", image=a, strength=2.0)])
    with pytest.raises(InputError, match="prompt_2"):  # an SDXL argument for an SD 1.x folder
        pipe.call_many([dict(prompt="ok", image=a, prompt_2="no")])
    with pytest.raises(InputError, match="unknown argument 'callback'"):  # one for all calls
        pipe.call_many([dict(prompt="ok", image=a, callback=print)])
    assert ran == []


def test_should_stop_stops_a_call_between_its_engine_calls(tiny, photo):
    from fastimg.errors import Cancelled

    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    ran = []
    pipe.wrap_sessions(lambda name, session: _Counting(name, session, ran))
    asked = []

    def should_stop() -> bool:  # no before encoding, yes before decoding
        asked.append(len(ran))
        return len(asked) > 1

    call = dict(prompt="a cat", image=photo, strength=0.5, num_inference_steps=4, seed=1)
    with pytest.raises(Cancelled, match="before decoding"):
        pipe.call_many([call], should_stop=should_stop)
    assert "unet" in ran and "vae_decoder" not in ran  # the UNet ran; no decoder call followed
    (image,) = pipe.call_many([call], should_stop=lambda: False)[0]
    assert image.size == (88, 64)


class _Counting:
    def __init__(self, name, session, ran):
        self.name, self.session, self.ran = name, session, ran
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds):
        self.ran.append(self.name)
        return self.session.run(feeds)
