"""Samplers as short loops over a denoiser, in the manner of k-diffusion's sampling.py.

`denoise(x, i)` runs the model at step i of the plan and returns (x0, eps): the predicted clean
latent and noise. `rng.randn(shape)` draws noise. Each sampler returns the final latent; the
per-step coefficients come precomputed in the Plan, so the loop bodies have fixed shapes.
Arrays may be NumPy or CuPy: the loops use only operators and array methods both share, and
host scalars (NumPy float32), so on a GPU nothing in them waits for the device.
"""

from collections.abc import Callable

import numpy as np

from .schedules import Plan

Denoiser = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
# after(x, i): the state after step i as the caller changes it (inpainting puts back the kept
# region's latents), as a pipeline's code after scheduler.step does.
After = Callable[[np.ndarray, int], np.ndarray] | None


def _f32(value) -> np.float32:
    return np.float32(value)


def _clip(x0: np.ndarray, plan: Plan) -> np.ndarray:
    return x0 if plan.clip_sample is None else x0.clip(-plan.clip_sample, plan.clip_sample)


def ddim(denoise: Denoiser, x: np.ndarray, plan: Plan, rng, after: After = None) -> np.ndarray:
    """Deterministic DDIM, eta = 0 (Song et al. 2020, eq. 12)."""
    for i in range(plan.steps):
        x0, eps = denoise(x, i)
        x = _f32(plan.alpha_next[i]) * _clip(x0, plan) + _f32(plan.sigma_next[i]) * eps
        if after is not None:
            x = after(x, i)
    return x


def euler(denoise: Denoiser, x: np.ndarray, plan: Plan, rng, after: After = None) -> np.ndarray:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2, no churn)."""
    for i in range(plan.steps):
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        x0, _ = denoise(x, i)
        d = (x - x0) / _f32(sigma)
        x = x + d * _f32(sigma_next - sigma)
        if after is not None:
            x = after(x, i)
    return x


def euler_a(denoise: Denoiser, x: np.ndarray, plan: Plan, rng, after: After = None) -> np.ndarray:
    """Ancestral Euler: a deterministic step to sigma_down, then fresh noise of size sigma_up."""
    for i in range(plan.steps):
        sigma, sigma_next = plan.sigmas[i], plan.sigmas[i + 1]
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x0, _ = denoise(x, i)
        d = (x - x0) / _f32(sigma)
        x = x + d * _f32(sigma_down - sigma)
        x = x + rng.randn(x.shape) * _f32(sigma_up)
        if after is not None:
            x = after(x, i)
    return x


def dpmpp_2m(denoise: Denoiser, x: np.ndarray, plan: Plan, rng, after: After = None) -> np.ndarray:
    """DPM-Solver++(2M), midpoint form (Lu et al. 2022, Algorithm 2); first order where planned."""
    alpha, sigma = plan.alpha, plan.sigma
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
        next_alpha = 1.0 / np.sqrt(plan.sigmas[1:] ** 2 + 1.0)
        next_sigma = plan.sigmas[1:] * next_alpha
        lam_next = np.log(next_alpha) - np.log(next_sigma)
    x0_prev = None
    for i in range(plan.steps):
        x0, _ = denoise(x, i)
        h = lam_next[i] - lam[i]
        decay = _f32(next_sigma[i] / sigma[i])
        gain = _f32(-next_alpha[i] * np.expm1(-h))
        if plan.second_order[i]:
            r = (lam[i] - lam[i - 1]) / h
            d = x0 + (x0 - x0_prev) * _f32(0.5 / r)
            x = decay * x + gain * d
        else:
            x = decay * x + gain * x0
        x0_prev = x0
        if after is not None:
            x = after(x, i)
    return x


def lcm(denoise: Denoiser, x: np.ndarray, plan: Plan, rng, after: After = None) -> np.ndarray:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1)."""
    for i in range(plan.steps):
        x0, _ = denoise(x, i)
        x = _f32(plan.c_out[i]) * _clip(x0, plan) + _f32(plan.c_skip[i]) * x
        if i < plan.steps - 1:
            noise = rng.randn(x.shape)
            x = _f32(plan.alpha_next[i]) * x + _f32(plan.sigma_next[i]) * noise
        if after is not None:
            x = after(x, i)
    return x


SAMPLE = {
    "ddim": ddim,
    "euler": euler,
    "euler_a": euler_a,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_karras": dpmpp_2m,
    "lcm": lcm,
}


def noise_draws(plan: Plan) -> int:
    """How many times the plan's sampler calls rng.randn inside its loop."""
    return {"euler_a": plan.steps, "lcm": plan.steps - 1}.get(plan.sampler, 0)


def add_noise(z: np.ndarray, eps: np.ndarray, plan: Plan) -> np.ndarray:
    """Noise the clean latent z to the run's first timestep (the scheduler's add_noise)."""
    a, b = plan.noise_scales
    return _f32(a) * z + _f32(b) * eps


def noise_scales_at(plan: Plan, i: int) -> tuple[float, float]:
    """(a, b) with x = a * z + b * eps at step i: the scheduler's add_noise at that step."""
    if plan.sampler in ("euler", "euler_a"):
        return 1.0, float(plan.sigmas[i])
    return float(plan.alpha[i]), float(plan.sigma[i])


def predict(out: np.ndarray, x: np.ndarray, plan: Plan, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(x0, eps) from the model output at step i, for the plan's prediction type.

    `x` is the sampler state; the formulas work on the VP latent x * input_scale.
    """
    a, s = _f32(plan.alpha[i]), _f32(plan.sigma[i])
    x_vp = x * _f32(plan.input_scale[i])
    if plan.prediction_type == "epsilon":
        return (x_vp - s * out) / a, out
    if plan.prediction_type == "v_prediction":
        return a * x_vp - s * out, s * x_vp + a * out
    return out, (x_vp - a * out) / s
