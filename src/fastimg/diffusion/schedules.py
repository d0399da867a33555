"""Noise schedules as data: betas, timesteps, sigmas, and the per-step coefficients of a run.

Every function mirrors the diffusers scheduler named beside it, from the same config keys, so that
timesteps and sigmas come out equal (tests/diffusion/test_schedules.py checks them against
diffusers).
"""

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..settings import SAMPLERS

DIFFUSERS_CLASS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
}

# Each sampler's name fixes these keys, whatever the model's own config says.
SAMPLER_OVERRIDES = {
    "dpmpp_2m": {"use_karras_sigmas": False, "solver_order": 2, "algorithm_type": "dpmsolver++"},
    "dpmpp_2m_karras": {
        "use_karras_sigmas": True,
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
    },
}

_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
_THRESHOLDING = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}

# The constructor defaults of diffusers' scheduler classes: a key missing from a model's config
# takes these values, exactly as `SchedulerClass.from_config(config)` does.
CLASS_DEFAULTS = {
    "DDIMScheduler": {
        **_COMMON,
        **_THRESHOLDING,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
    },
    "EulerDiscreteScheduler": {
        **_COMMON,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    },
    "EulerAncestralDiscreteScheduler": {**_COMMON, "timestep_spacing": "linspace"},
    "DPMSolverMultistepScheduler": {
        **_COMMON,
        **_THRESHOLDING,
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
        "timestep_spacing": "linspace",
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    },
    "LCMScheduler": {
        **_COMMON,
        **_THRESHOLDING,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
    },
}

# Settings these samplers do not reproduce: a config asking for them is refused, never approximated.
_UNSUPPORTED = {
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "interpolation_type": "linear",
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "timestep_type": "discrete",
    "solver_type": "midpoint",
    "variance_type": None,
    "use_dynamic_shifting": False,
}

_SAMPLER_OF_CLASS = {
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "LCMScheduler": "lcm",
}


def default_sampler(scheduler_config: dict) -> str | None:
    """The sampler a model's own scheduler config names, or None when fastimg has no equivalent."""
    sampler = _SAMPLER_OF_CLASS.get(scheduler_config.get("_class_name", ""))
    if sampler == "dpmpp_2m" and scheduler_config.get("use_karras_sigmas"):
        return "dpmpp_2m_karras"
    return sampler


FALLBACK_SAMPLER = "ddim"  # what runs where the model's own scheduler has no equivalent


def runtime_sampler(scheduler_config: dict) -> str:
    """The sampler fastimg runs by default on a model: its own scheduler's, else ddim."""
    return default_sampler(scheduler_config) or FALLBACK_SAMPLER


def resolve_config(scheduler_config: dict, sampler: str) -> dict:
    """The config diffusers would run `sampler` with, built from a model's scheduler config."""
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    defaults = CLASS_DEFAULTS[DIFFUSERS_CLASS[sampler]]
    config = {k: scheduler_config.get(k, v) for k, v in defaults.items()}
    config.update(SAMPLER_OVERRIDES.get(sampler, {}))
    for key, supported in _UNSUPPORTED.items():
        if key in config and config[key] != supported:
            raise InputError(
                f"scheduler setting {key}={config[key]!r} is not supported by fastimg's {sampler} "
                "sampler; pick another sampler with --scheduler or edit the engine's scheduler "
                "config"
            )
    if config["prediction_type"] not in ("epsilon", "v_prediction", "sample"):
        raise InputError(f"unknown prediction_type {config['prediction_type']!r}")
    return config


def _linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace in float32: halves counted from each end, with fused multiply-adds."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(n - 1))
    idx = np.arange(n)
    up = np.float64(start32) + step * idx
    down = np.float64(end32) - step * (n - 1 - idx)
    return np.where(idx < n // 2, up, down).astype(np.float32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """diffusers' betas_for_alpha_bar with the cosine alpha-bar (squaredcos_cap_v2)."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=np.float32)


def betas(config: dict) -> np.ndarray:
    """Beta table of the training schedule, float32, as the scheduler's constructor builds it."""
    n = config["num_train_timesteps"]
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float32)
    kind = config["beta_schedule"]
    if kind == "linear":
        return _linspace_f32(config["beta_start"], config["beta_end"], n)
    if kind == "scaled_linear":
        return _linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    if kind == "squaredcos_cap_v2":
        return _cosine_betas(n)
    raise InputError(f"beta_schedule {kind!r} is not supported")


def alphas_cumprod(config: dict) -> np.ndarray:
    """Cumulative product of 1 - beta, float32 (torch accumulates it in double)."""
    alphas = (np.float32(1.0) - betas(config)).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def _sigma_table(ac: np.ndarray) -> np.ndarray:
    return np.sqrt((np.float32(1.0) - ac) / ac).astype(np.float32)


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(np.shape(sigma))


def _final_sigma(config: dict, ac: np.ndarray) -> float:
    if config["final_sigmas_type"] == "zero":
        return 0.0
    if config["final_sigmas_type"] == "sigma_min":
        return float(((1 - ac[0]) / ac[0]) ** 0.5)
    raise InputError(f"final_sigmas_type {config['final_sigmas_type']!r} is not supported")


def _spacing_error(config: dict) -> InputError:
    return InputError(
        f"timestep_spacing {config['timestep_spacing']!r} is not supported: "
        "use linspace, leading or trailing"
    )


def _ddim_timesteps(config: dict, n: int) -> np.ndarray:
    """DDIMScheduler.set_timesteps (LCM shares nothing with it; see _lcm_timesteps)."""
    T, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + config["steps_offset"]
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    raise _spacing_error(config)


def _euler_timesteps(config: dict, n: int) -> np.ndarray:
    """EulerDiscreteScheduler / EulerAncestralDiscreteScheduler spacing, float32."""
    T, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float32)
        return ts + np.float32(config["steps_offset"])
    if spacing == "trailing":
        return np.arange(T, 0, -T / n).round().astype(np.float32) - np.float32(1)
    raise _spacing_error(config)


def _dpm_timesteps(config: dict, n: int, ac: np.ndarray) -> np.ndarray:
    """DPMSolverMultistepScheduler spacing, int64, honouring lambda_min_clipped."""
    T, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    lambda_t = np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))
    clipped = np.searchsorted(np.flip(lambda_t), config["lambda_min_clipped"])
    last = int(T - clipped)
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64)
        return ts + config["steps_offset"]
    if spacing == "trailing":
        return np.arange(last, 0, -T / n).round().astype(np.int64) - 1
    raise _spacing_error(config)


def _lcm_timesteps(config: dict, n: int, strength: float = 1.0) -> np.ndarray:
    """LCMScheduler.set_timesteps(n, strength=strength): at strength 1 as
    StableDiffusionImg2ImgPipeline calls it, otherwise as LatentConsistencyModelImg2ImgPipeline
    does (the strength cuts the distillation schedule before n steps are picked from it)."""
    original = config["original_inference_steps"]
    origin = np.arange(1, int(original * strength) + 1) * (
        config["num_train_timesteps"] // original
    )
    origin = origin - 1
    if n > original:
        raise InputError(f"the lcm sampler allows at most {original} steps, got {n}")
    if len(origin) // n < 1:
        need = math.ceil(n / original * 100) / 100
        raise InputError(
            f"{n} LCM steps at strength {strength} leave fewer than one distillation step each "
            f"({original} x {strength} = {int(original * strength)}): lower --steps or raise "
            f"--strength to at least {need}"
        )
    indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
    return origin[::-1][indices].astype(np.int64)


def full_schedule(config: dict, sampler: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(timesteps, sigmas) of `set_timesteps(n)`; sigmas is None for ddim and lcm."""
    ac = alphas_cumprod(config)
    if sampler == "ddim":
        return _ddim_timesteps(config, n), None
    if sampler == "lcm":
        return _lcm_timesteps(config, n), None
    table = _sigma_table(ac)
    log_sigmas = np.log(table)
    if sampler in ("euler", "euler_a"):
        timesteps = _euler_timesteps(config, n)
        sigmas = np.interp(timesteps, np.arange(len(table)), table)
        if config.get("use_karras_sigmas"):
            sigma_min = config["sigma_min"] if config.get("sigma_min") is not None else sigmas[-1]
            sigma_max = config["sigma_max"] if config.get("sigma_max") is not None else sigmas[0]
            sigmas = _karras(float(sigma_min), float(sigma_max), n)
            timesteps = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
        last = _final_sigma(config, ac) if sampler == "euler" else 0.0
        sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        return timesteps.astype(np.float32), sigmas
    timesteps = _dpm_timesteps(config, n, ac)
    if config["use_karras_sigmas"]:
        sigmas = _karras(float(table[0]), float(table[-1]), n)
        timesteps = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas]).round()
    else:
        sigmas = np.interp(timesteps, np.arange(len(table)), table)
    sigmas = np.concatenate([sigmas, [_final_sigma(config, ac)]]).astype(np.float32)
    return timesteps.astype(np.int64), sigmas


def img2img_start(steps: int, strength: float) -> int:
    """Index of the first scheduled step an img2img run takes, as diffusers' get_timesteps."""
    if not 0 < strength <= 1:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    init = min(int(steps * strength), steps)
    if init == 0:
        need = math.ceil(1 / strength)
        raise InputError(
            f"strength {strength} x {steps} steps runs zero denoising steps: "
            f"raise --steps to at least {need} or raise --strength"
        )
    return max(steps - init, 0)


@dataclass(frozen=True)
class Plan:
    """Everything one img2img run needs per step, computed before the loop.

    The sampler state x relates to the variance-preserving latent by x_vp = x * input_scale, where
    x_vp = alpha * x0 + sigma * eps. Arrays are indexed by the run's step i (0 .. steps-1).
    """

    sampler: str
    prediction_type: str
    timesteps: np.ndarray  # float32, the UNet's timestep input at each step
    input_scale: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    noise_scales: tuple[float, float]  # x = a * z + b * eps at the first timestep
    sigmas: np.ndarray | None = None  # euler/dpm: k-diffusion sigmas, steps + 1 of them
    alpha_next: np.ndarray | None = None  # ddim/lcm: VP coefficients of the following timestep
    sigma_next: np.ndarray | None = None
    c_skip: np.ndarray | None = None  # lcm boundary-condition scalings
    c_out: np.ndarray | None = None
    second_order: np.ndarray | None = None  # dpm: whether step i is a 2nd-order step
    clip_sample: float | None = None  # ddim/lcm: clamp x0 to +-this
    init_noise_sigma: float = 1.0  # the scheduler's: pure noise's scale in the sampler state

    @property
    def steps(self) -> int:
        """Number of UNet steps in this run."""
        return len(self.timesteps)


def _check_within_training(config, sampler: str, steps: int, timesteps, trained: int) -> None:
    """Refuse a step count whose schedule reaches past the last trained timestep, naming the
    largest count that fits: DDIM's 'leading' spacing with steps_offset 1 at 1000 steps asks for
    alphas_cumprod[1000] of 0..999, where diffusers fails with an IndexError."""
    if timesteps.max() < trained:
        return
    fits = next(n for n in range(steps - 1, 0, -1) if full_schedule(config, sampler, n)[0].max()
                < trained)  # fmt: skip
    raise InputError(
        f"{steps} steps put the first timestep at {int(timesteps.max())}, past this model's "
        f"{trained} trained timesteps ({config.get('timestep_spacing', 'leading')} spacing, "
        f"steps_offset {config.get('steps_offset', 0)}): use at most {fits} steps"
    )


def _vp(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1.0 / np.sqrt(sigmas.astype(np.float64) ** 2 + 1.0)
    return alpha, sigmas * alpha


def _init_noise_sigma(config: dict, sigmas: np.ndarray) -> float:
    """Euler's init_noise_sigma: the largest sigma, or sqrt(sigma^2 + 1) for leading spacing."""
    top = float(np.float32(sigmas.max()))
    if config["timestep_spacing"] in ("linspace", "trailing"):
        return top
    return float(np.sqrt(np.float32(top) ** 2 + np.float32(1.0)))


def make_plan(
    scheduler_config: dict,
    sampler: str,
    steps: int,
    strength: float,
    strength_in_schedule: bool = False,
) -> Plan:
    """Per-step coefficients for an img2img run of `steps` scheduled steps at `strength`.

    `strength_in_schedule`: the LCM img2img semantics (LatentConsistencyModelImg2ImgPipeline)
    for the lcm sampler, where all `steps` run on a schedule the strength has cut.
    """
    config = resolve_config(scheduler_config, sampler)
    trained = int(config["num_train_timesteps"])
    if steps > trained:
        raise InputError(
            f"{steps} steps is more than the {trained} timesteps this model was trained with "
            f"(as diffusers, fastimg refuses it): use at most {trained} steps"
        )
    if sampler == "lcm" and strength_in_schedule:
        if not 0 < strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {strength}")
        start, timesteps, sigmas = 0, _lcm_timesteps(config, steps, strength), None
    else:
        start = img2img_start(steps, strength)
        timesteps, sigmas = full_schedule(config, sampler, steps)
        if sampler in ("ddim", "lcm"):  # (they index alphas_cumprod by timestep)
            _check_within_training(config, sampler, steps, timesteps, trained)
    ac = alphas_cumprod(config).astype(np.float64)
    ts = timesteps[start:]
    common = {"sampler": sampler, "prediction_type": config["prediction_type"]}

    if sampler in ("ddim", "lcm"):
        idx = ts.astype(np.int64)
        final_ac = 1.0 if config["set_alpha_to_one"] else ac[0]
        if sampler == "ddim":
            prev = idx - config["num_train_timesteps"] // steps
        else:
            prev = np.append(idx[1:], idx[-1])
        ac_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final_ac)
        plan = dict(
            timesteps=ts.astype(np.float32),
            input_scale=np.ones(len(ts)),
            alpha=np.sqrt(ac[idx]),
            sigma=np.sqrt(1 - ac[idx]),
            noise_scales=(math.sqrt(ac[idx[0]]), math.sqrt(1 - ac[idx[0]])),
            alpha_next=np.sqrt(ac_prev),
            sigma_next=np.sqrt(1 - ac_prev),
            clip_sample=config["clip_sample_range"] if config["clip_sample"] else None,
        )
        if sampler == "lcm":
            scaled = idx * config["timestep_scaling"]
            plan["c_skip"] = 0.25 / (scaled**2 + 0.25)
            plan["c_out"] = scaled / np.sqrt(scaled**2 + 0.25)
        return Plan(**common, **plan)

    run_sigmas = sigmas[start:].astype(np.float64)
    alpha, sigma = _vp(run_sigmas[:-1])
    if sampler in ("euler", "euler_a"):
        return Plan(
            **common,
            timesteps=ts.astype(np.float32),
            input_scale=alpha,
            alpha=alpha,
            sigma=sigma,
            noise_scales=(1.0, float(run_sigmas[0])),
            sigmas=run_sigmas,
            init_noise_sigma=_init_noise_sigma(config, sigmas),
        )
    n_total = len(timesteps)
    absolute = np.arange(start, n_total)
    lower_final = (absolute == n_total - 1) & (
        config["euler_at_final"]
        or (config["lower_order_final"] and n_total < 15)
        or config["final_sigmas_type"] == "zero"
    )
    second = (np.arange(len(ts)) >= 1) & ~lower_final
    return Plan(
        **common,
        timesteps=ts.astype(np.float32),
        input_scale=np.ones(len(ts)),
        alpha=alpha,
        sigma=sigma,
        noise_scales=(float(alpha[0]), float(sigma[0])),
        sigmas=run_sigmas,
        second_order=second,
    )


def guidance_embedding(w: np.ndarray, dim: int) -> np.ndarray:
    """float32 [len(w), dim] sinusoidal embedding of guidance scales `w`, as diffusers'
    get_guidance_scale_embedding builds an LCM-distilled UNet's timestep_cond."""
    w = np.asarray(w, dtype=np.float32) * np.float32(1000.0)
    half = dim // 2
    step = np.float32(np.log(np.float32(10000.0))) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -step)
    emb = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)
