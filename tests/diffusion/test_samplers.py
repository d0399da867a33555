"""Each sampler against the diffusers scheduler it mirrors, driven by the same stand-in model."""

import numpy as np
import pytest

from fastimg.diffusion import samplers, schedules
from fastimg.diffusion.rng import TorchCompatibleGenerator

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from fastimg_export.loading import diffusers_scheduler  # noqa: E402

BASE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}
SHAPE = (2, 4, 6, 5)


def model(x_in: np.ndarray, t: float) -> np.ndarray:
    """A smooth stand-in for the UNet, so every coefficient of the update matters."""
    return (0.6 * np.tanh(x_in) + 0.05 * np.cos(x_in * 3.0) + t / 4000.0).astype(np.float32)


def run_diffusers(config, sampler, steps, strength, z, seed):
    sched = diffusers_scheduler(config, sampler)
    sched.set_timesteps(steps)
    start = schedules.img2img_start(steps, strength)
    timesteps = sched.timesteps[start:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(SHAPE, generator=g)
    x = sched.add_noise(torch.from_numpy(z), noise, timesteps[:1].repeat(SHAPE[0]))
    for t in timesteps:
        x_in = sched.scale_model_input(x, t)
        out = torch.from_numpy(model(x_in.numpy(), float(t)))
        x = sched.step(out, t, x, generator=g, return_dict=False)[0]
    return x.numpy()


def run_fastimg(config, sampler, steps, strength, z, seed):
    plan = schedules.make_plan({"_class_name": "x", **config}, sampler, steps, strength)
    rng = TorchCompatibleGenerator(seed)
    x = samplers.add_noise(z, rng.randn(SHAPE), plan)

    def denoise(x, i):
        out = model(x * np.float32(plan.input_scale[i]), float(plan.timesteps[i]))
        return samplers.predict(out, x, plan, i)

    return samplers.SAMPLE[sampler](denoise, x, plan, rng)


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps,strength", [(10, 0.3), (10, 1.0), (1, 1.0), (6, 0.5), (25, 0.8)])
def test_sampler_trajectory_equals_diffusers(sampler, spacing, prediction, steps, strength):
    config = {**BASE, "timestep_spacing": spacing, "prediction_type": prediction}
    z = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    expected = run_diffusers(config, sampler, steps, strength, z, seed=7)
    got = run_fastimg(config, sampler, steps, strength, z, seed=7)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_ddim_clip_sample_is_applied_like_diffusers():
    config = {**BASE, "clip_sample": True, "clip_sample_range": 0.5}
    z = 3 * np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    expected = run_diffusers(config, "ddim", 8, 0.75, z, seed=3)
    np.testing.assert_allclose(run_fastimg(config, "ddim", 8, 0.75, z, seed=3), expected, atol=1e-4)
