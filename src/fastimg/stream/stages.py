"""One sampler step at a time, so frames at different steps can share one UNet batch
(StreamDiffusion's denoising batch): a frame's step i is the plan's sampler run on the
one-step plan of step i, with the model's prediction already made for it.

Only samplers whose step depends on nothing but the state, the prediction and that step's
noise can be staged this way: ddim, euler, euler_a and lcm (DPM-Solver++(2M) keeps the
previous step's prediction, so its frames cannot leave the loop between steps).
"""

from dataclasses import replace

import numpy as np

from ..diffusion import samplers
from ..diffusion.schedules import Plan
from ..errors import InputError

STAGED = ("ddim", "euler", "euler_a", "lcm")


def check_staged(sampler: str, why: str) -> None:
    """Refuse a sampler the stages cannot run, naming the fix."""
    if sampler not in STAGED:
        raise InputError(
            f"{why} needs a sampler that runs one step per frame stage ({', '.join(STAGED)}), "
            f"not {sampler}: pass --sampler lcm (or euler), or turn {why} off"
        )


def stage_noise_count(plan: Plan) -> int:
    """How many noise draws the sampler makes inside its loop (after the starting noise)."""
    return samplers.noise_draws(plan)


def stage_noise(plan: Plan, noise: list, i: int):
    """The loop noise step i uses (lcm: the re-noising after it; euler_a: its ancestral
    noise), or None: drawn in the order the sampler's loop draws it."""
    if plan.sampler == "lcm":
        return noise[i] if i < plan.steps - 1 else None
    if plan.sampler == "euler_a":
        return noise[i]
    return None


def one_step(plan: Plan, i: int) -> Plan:
    """The plan of step i alone."""
    pick = slice(i, i + 1)
    sliced = {
        name: getattr(plan, name)[pick]
        for name in ("timesteps", "input_scale", "alpha", "sigma", "alpha_next", "sigma_next",
                     "c_skip", "c_out", "second_order")
        if getattr(plan, name) is not None
    }  # fmt: skip
    if plan.sigmas is not None:
        sliced["sigmas"] = plan.sigmas[i : i + 2]
    return replace(plan, **sliced)


class Given:
    """A generator whose one draw is a noise array fixed beforehand."""

    def __init__(self, noise):
        self.noise = noise

    def randn(self, shape):
        """The fixed noise (its shape is the state's)."""
        return self.noise


def step(plan: Plan, i: int, x, x0, eps, noise=None):
    """The state after step i of the plan from state x, given the model's (x0, eps) at x."""
    x = samplers.SAMPLE[plan.sampler](lambda _x, _i: (x0, eps), x, one_step(plan, i), Given(noise))
    if plan.sampler == "lcm" and i < plan.steps - 1:  # lcm's re-noising between its steps
        x = np.float32(plan.alpha_next[i]) * x + np.float32(plan.sigma_next[i]) * noise
    return x
