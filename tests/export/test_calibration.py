"""int8 calibration runs the runtime's sampler and leaves the model's scheduler as it was."""

import pytest

pytest.importorskip("torch")

PNDM = {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from fastimg_export.loading import load_pipeline
    from fastimg_export.random_models import write_random_model

    return load_pipeline(str(write_random_model("tiny", tmp_path_factory.mktemp("model") / "m")))


def _with_scheduler(pipe, name: str, **overrides):
    import diffusers

    scheduler = getattr(diffusers, name).from_config({**pipe.scheduler.config, **overrides})
    pipe.scheduler = scheduler
    return scheduler


def test_a_pndm_model_is_calibrated_on_the_timesteps_the_runtime_runs(tiny_pipe):
    """sd15's PNDM has no fastimg sampler: the runtime runs ddim, so calibration does too."""
    from fastimg.diffusion import schedules
    from fastimg_export.calibration import (
        CALIBRATION_STEPS,
        CALIBRATION_STRENGTH,
        calibration_feeds,
    )

    own = _with_scheduler(tiny_pipe, "PNDMScheduler", **PNDM)
    try:
        feeds = calibration_feeds(tiny_pipe, 1, log=lambda m: None)
        config = {**own.config, "_class_name": "PNDMScheduler"}
        plan = schedules.make_plan(config, "ddim", CALIBRATION_STEPS, CALIBRATION_STRENGTH)
        seen = [float(feed["timestep"][0]) for feed in feeds["unet"]]
        assert seen == [float(t) for t in plan.timesteps]
        assert tiny_pipe.scheduler is own  # the manifest records the model's own
    finally:
        _with_scheduler(tiny_pipe, "DDIMScheduler")


def test_a_supported_scheduler_is_calibrated_as_itself(tiny_pipe):
    from fastimg_export.loading import runtime_scheduler

    euler = _with_scheduler(tiny_pipe, "EulerAncestralDiscreteScheduler")
    try:
        again = runtime_scheduler(euler)
        assert type(again) is type(euler) and again.config == euler.config
        karras = _with_scheduler(tiny_pipe, "DPMSolverMultistepScheduler", use_karras_sigmas=True)
        again = runtime_scheduler(karras)
        assert type(again).__name__ == "DPMSolverMultistepScheduler"
        assert again.config.use_karras_sigmas and again.config.solver_order == 2
    finally:
        _with_scheduler(tiny_pipe, "DDIMScheduler")


def test_a_failed_calibration_puts_the_scheduler_back(tiny_pipe):
    from fastimg_export.calibration import run_calibration

    own = _with_scheduler(tiny_pipe, "PNDMScheduler", **PNDM)
    removed = []

    def fail(image, index):
        raise RuntimeError("broken control image")

    try:
        with pytest.raises(RuntimeError, match="broken control image"):
            run_calibration(tiny_pipe, 1, [lambda: removed.append(1)], lambda m: None, "", fail)
        assert tiny_pipe.scheduler is own and removed == [1]
    finally:
        _with_scheduler(tiny_pipe, "DDIMScheduler")
