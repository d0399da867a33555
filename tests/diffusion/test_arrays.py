"""The sampler loop on an array namespace: no host round trip inside it, same stream of noise."""

import numpy as np
import pytest

from fastimg.diffusion import samplers, schedules
from fastimg.diffusion.arrays import PredrawnNoise, namespace, to_host
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.diffusion.rng import TorchCompatibleGenerator


class DeviceLike(np.ndarray):
    """An ndarray that, while `strict`, refuses every conversion that would sync a GPU."""

    strict = False

    def __bool__(self):
        if DeviceLike.strict:
            raise AssertionError("bool() of a device array inside the sampler loop")
        return bool(self.view(np.ndarray))

    def __float__(self):
        if DeviceLike.strict:
            raise AssertionError("float() of a device array inside the sampler loop")
        return float(self.view(np.ndarray))

    def tolist(self):
        if DeviceLike.strict:
            raise AssertionError("tolist() of a device array inside the sampler loop")
        return self.view(np.ndarray).tolist()

    def item(self, *args):
        if DeviceLike.strict:
            raise AssertionError("item() of a device array inside the sampler loop")
        return self.view(np.ndarray).item(*args)


class FakeUnet:
    device = "cpu"
    input_names = ["sample", "timestep", "encoder_hidden_states"]
    output_names = ["out_sample"]

    def run(self, feeds):
        sample = feeds["sample"]
        return {"out_sample": (np.tanh(sample) * np.float32(0.5)).view(DeviceLike)}


def test_predrawn_noise_is_the_same_stream():
    direct = TorchCompatibleGenerator(7)
    expected = [direct.randn((1, 4, 8, 8)) for _ in range(3)]
    noise = PredrawnNoise(TorchCompatibleGenerator(7), (1, 4, 8, 8), 3, np)
    for e in expected:
        np.testing.assert_array_equal(noise.randn((1, 4, 8, 8)), e)
    with pytest.raises(RuntimeError, match="more noise"):
        noise.randn((1, 4, 8, 8))


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
def test_noise_draws_match_what_each_sampler_draws(sampler):
    plan = schedules.make_plan(schedules.CLASS_DEFAULTS["DDIMScheduler"], sampler, 10, 0.6)
    counted = []

    class Counting:
        def randn(self, shape):
            counted.append(shape)
            return np.zeros(shape, np.float32)

    x = np.zeros((1, 4, 4, 4), np.float32)
    samplers.SAMPLE[sampler](lambda x, i: (x, x), x, plan, Counting())
    assert len(counted) == samplers.noise_draws(plan)


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_the_denoise_loop_never_reads_device_values(tiny, sampler, guidance, monkeypatch):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    pipe.sessions["unet"] = FakeUnet()
    real = samplers.SAMPLE[sampler]

    def strict_sampler(*args):
        DeviceLike.strict = True
        try:
            return real(*args)
        finally:
            DeviceLike.strict = False

    monkeypatch.setitem(samplers.SAMPLE, sampler, strict_sampler)
    plan = schedules.make_plan(pipe.manifest.scheduler, sampler, 8, 0.7)
    latents = np.ones((1, 4, 8, 8), np.float32).view(DeviceLike)
    embeddings = np.zeros((2 if guidance > 1 else 1, 77, 32), np.float32).view(DeviceLike)
    out = pipe.denoise(latents, embeddings, plan, guidance, TorchCompatibleGenerator(1))
    assert isinstance(out, DeviceLike) and np.isfinite(out.view(np.ndarray)).all()


def test_cpu_namespace_is_numpy_and_to_host_is_identity():
    assert namespace("cpu") is np
    a = np.ones(3)
    assert to_host(a) is a


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m", "lcm"])
def test_the_sampler_loop_on_cupy_matches_numpy(sampler):
    cp = pytest.importorskip("cupy")
    plan = schedules.make_plan(schedules.CLASS_DEFAULTS["DDIMScheduler"], sampler, 10, 0.6)
    x = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)

    def model(xp):
        return lambda x, i: samplers.predict(xp.tanh(x) * np.float32(0.3), x, plan, i)

    expected = samplers.SAMPLE[sampler](model(np), x, plan, TorchCompatibleGenerator(3))
    noise = PredrawnNoise(TorchCompatibleGenerator(3), x.shape, samplers.noise_draws(plan), cp)
    got = samplers.SAMPLE[sampler](model(cp), cp.asarray(x), plan, noise)
    np.testing.assert_allclose(to_host(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler_a", "lcm", "dpmpp_2m"])
def test_the_device_code_path_gives_the_cpu_image(tiny, photo, sampler):
    """Run the pipeline's GPU branch (pre-drawn noise, device-side NaN flags) with NumPy."""
    import types

    job = dict(prompt="a fox", image=photo, strength=0.7, num_inference_steps=6, seed=2)
    job["scheduler"] = sampler
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    expected = pipe(**job)[0]
    pipe.xp = types.SimpleNamespace(
        **{k: getattr(np, k) for k in dir(np) if not k.startswith("__")}
    )
    assert pipe.xp is not np
    got = pipe(**job)[0]
    assert np.array_equal(np.asarray(expected), np.asarray(got))
