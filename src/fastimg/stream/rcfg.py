"""StreamDiffusion's residual classifier-free guidance (RCFG) on the lcm sampler: the
negative prediction is a stored "residual noise" scaled by DELTA instead of a second UNet
image; "self" starts each frame's residual from the noise added to it, "onetime" from one
negative UNet image at the frame's first step; the residual follows the frame from step to
step as StreamDiffusion's stock noise does."""

import numpy as np

from ..diffusion.schedules import Plan
from ..errors import InputError

MODES = ("none", "self", "onetime", "full")
DELTA = 1.0  # StreamDiffusion's default scale of the residual noise


def check(mode: str, plan: Plan, distilled: bool) -> None:
    """Refuse a residual CFG the model or sampler cannot take, naming the fix."""
    if mode not in MODES:
        raise InputError(f"rcfg must be one of {', '.join(MODES)}, got {mode!r}")
    if mode not in ("self", "onetime"):
        return
    if distilled:
        raise InputError(
            f"rcfg {mode!r} guides with a residual noise, but this LCM-distilled model takes "
            "its guidance as timestep_cond: use --rcfg none"
        )
    if plan.sampler != "lcm" or plan.prediction_type != "epsilon":
        raise InputError(
            f"rcfg {mode!r} follows StreamDiffusion's LCM steps (epsilon prediction), not "
            f"{plan.sampler} on {plan.prediction_type}: pass --sampler lcm, or --rcfg full"
        )


def guide(text, residual, guidance: float):
    """The guided noise prediction with DELTA x the residual as the negative one."""
    uncond = residual * np.float32(DELTA)
    return uncond + np.float32(guidance) * (text - uncond)


def next_residual(plan: Plan, i: int, guided, residual, noise):
    """The residual of the frame's next step: its noise plus the step of the scaled residual
    (StreamDiffusion's delta_x), brought to the next step's noise level."""
    a, s = np.float32(plan.alpha[i]), np.float32(plan.sigma[i])
    scaled = s * residual
    delta_x = np.float32(plan.c_out[i]) * (scaled - s * guided) / a
    delta_x = delta_x + np.float32(plan.c_skip[i]) * scaled
    return noise + delta_x * np.float32(plan.alpha_next[i] / plan.sigma_next[i])
