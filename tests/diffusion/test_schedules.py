import numpy as np
import pytest

from fastimg.diffusion import schedules
from fastimg.errors import InputError

diffusers = pytest.importorskip("diffusers")
from fastimg_export.loading import diffusers_scheduler  # noqa: E402

SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


@pytest.mark.parametrize("cls_name", sorted(schedules.CLASS_DEFAULTS))
def test_class_defaults_equal_diffusers_constructor_defaults(cls_name):
    expected = {k: v for k, v in getattr(diffusers, cls_name)().config.items() if k[0] != "_"}
    assert schedules.CLASS_DEFAULTS[cls_name] == expected


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_equal_diffusers(schedule):
    config = {**SD15, "beta_schedule": schedule}
    ref = diffusers.DDIMScheduler.from_config(config)
    resolved = schedules.resolve_config(config, "ddim")
    np.testing.assert_array_equal(schedules.betas(resolved), ref.betas.numpy())
    np.testing.assert_allclose(
        schedules.alphas_cumprod(resolved), ref.alphas_cumprod.numpy(), rtol=2e-7, atol=0
    )


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 4, 7, 25, 50])
def test_timesteps_and_sigmas_equal_diffusers(sampler, spacing, steps):
    config = {**SD15, "timestep_spacing": spacing}
    ref = diffusers_scheduler(config, sampler)
    ref.set_timesteps(steps)
    timesteps, sigmas = schedules.full_schedule(
        schedules.resolve_config(config, sampler), sampler, steps
    )
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
    if sampler in ("ddim", "lcm"):  # these step on alphas; diffusers keeps no sigmas for them
        assert sigmas is None and not hasattr(ref, "sigmas")
    else:
        np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_karras_sigmas_from_model_config_equal_diffusers(sampler):
    config = {**SD15, "use_karras_sigmas": True}
    ref = diffusers_scheduler(config, sampler if sampler == "euler" else "dpmpp_2m_karras")
    ref.set_timesteps(12)
    name = sampler if sampler == "euler" else "dpmpp_2m_karras"
    timesteps, sigmas = schedules.full_schedule(schedules.resolve_config(config, name), name, 12)
    np.testing.assert_allclose(timesteps, ref.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=1e-6)


def test_default_sampler_follows_the_model_scheduler_class():
    assert schedules.default_sampler({"_class_name": "EulerDiscreteScheduler"}) == "euler"
    karras = {"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}
    assert schedules.default_sampler(karras) == "dpmpp_2m_karras"
    assert schedules.default_sampler(SD15) is None
    # What runs by default: the own scheduler's sampler, ddim where there is none (PNDM).
    assert schedules.runtime_sampler(karras) == "dpmpp_2m_karras"
    assert schedules.runtime_sampler(SD15) == schedules.FALLBACK_SAMPLER == "ddim"


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize(
    "steps,strength", [(10, 0.3), (10, 1.0), (4, 0.5), (1, 1.0), (3, 0.34), (50, 0.75), (7, 0.99)]
)
def test_img2img_start_matches_diffusers_get_timesteps(sampler, steps, strength):
    from types import SimpleNamespace

    ref = diffusers_scheduler(SD15, sampler)
    ref.set_timesteps(steps)
    pipe = SimpleNamespace(scheduler=ref)  # get_timesteps reads only self.scheduler
    timesteps, run = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(
        pipe, steps, strength, "cpu"
    )
    start = schedules.img2img_start(steps, strength)
    assert steps - start == run
    plan = schedules.make_plan(SD15, sampler, steps, strength)
    np.testing.assert_allclose(plan.timesteps, timesteps.numpy().astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("steps,strength", [(2, 0.4), (10, 0.05)])
def test_zero_step_runs_are_rejected_with_the_fix(steps, strength):
    with pytest.raises(InputError, match="raise --steps"):
        schedules.img2img_start(steps, strength)


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.01])
def test_strength_outside_unit_interval_is_rejected(strength):
    with pytest.raises(InputError, match="strength"):
        schedules.img2img_start(10, strength)


def test_unsupported_scheduler_settings_are_refused_not_approximated():
    with pytest.raises(InputError, match="rescale_betas_zero_snr"):
        schedules.resolve_config({**SD15, "rescale_betas_zero_snr": True}, "ddim")
    with pytest.raises(InputError, match="unknown sampler"):
        schedules.resolve_config(SD15, "pndm")


def test_a_schedule_past_the_trained_timesteps_is_refused_naming_the_most_that_fit():
    config = {**SD15, "timestep_spacing": "leading", "steps_offset": 1}
    with pytest.raises(InputError, match="timestep at 1000, .* use at most 999 steps"):
        schedules.make_plan(config, "ddim", 1000, 1.0)
    assert schedules.make_plan(config, "ddim", 999, 1.0).steps == 999
    assert schedules.make_plan(config, "euler", 1000, 1.0).steps == 1000  # sigmas: as diffusers


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("sampler", ["euler", "euler_a", "ddim", "dpmpp_2m"])
def test_init_noise_sigma_is_the_schedulers(sampler, spacing):
    """Pure noise's scale in the sampler state, as diffusers' inpainting starts at strength 1."""
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "steps_offset": 1, "timestep_spacing": spacing}  # fmt: skip
    scheduler = diffusers_scheduler(config, sampler)
    scheduler.set_timesteps(10)
    plan = schedules.make_plan(config, sampler, 10, 1.0)
    assert plan.init_noise_sigma == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-6)
