"""An A1111 img2img request (stable-diffusion-webui's `StableDiffusionImg2ImgProcessingAPI`,
modules/api/models.py) read as fastimg's fields: each field either maps to a setting, is at a
value that changes nothing here, or is refused by name (422) with what to send instead.

A1111 gives each image of a batch its own seed (seed, seed + 1, ...): an A1111 request of
`batch_size` x `n_iter` images is that many fastimg requests of one image each, every one equal
to /v1/img2img with its seed. A `mask` (white, or opaque where it has alpha, is repainted) runs
as the pipeline's mask_image, with A1111's inpainting fields read as compat_a1111_mask says.
"""

import re
import secrets
from dataclasses import dataclass

from ..errors import InputError
from ..media.labels import SAMPLER_NAMES
from ..settings import SAMPLERS, SEED_LIMIT
from .compat_a1111_control import SCRIPT, ControlUnit, read_units
from .compat_a1111_mask import mask_settings
from .requests import decode_base64

# A1111's field -> fastimg's field, for the settings both have.
RENAMED = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "denoising_strength": "strength",
    "steps": "steps",
    "cfg_scale": "guidance",
}
# A1111's defaults (StableDiffusionProcessingImg2Img) for what fastimg has no default of its own.
DEFAULTS = {"prompt": "", "denoising_strength": 0.75, "steps": 20, "cfg_scale": 7.0,
            "width": 512, "height": 512, "batch_size": 1, "n_iter": 1, "seed": -1}  # fmt: skip
# A1111's sampler names (and aliases, lower case) with its scheduler "automatic" -> ours.
SAMPLER_ALIASES = {
    "euler a": "euler_a", "k_euler_a": "euler_a", "k_euler_ancestral": "euler_a",
    "euler": "euler", "k_euler": "euler",
    "ddim": "ddim",
    "dpm++ 2m": "dpmpp_2m_karras",  # (A1111 1.9+: its default scheduler is karras)
    "k_dpmpp_2m": "dpmpp_2m_karras",
    "dpm++ 2m karras": "dpmpp_2m_karras", "k_dpmpp_2m_ka": "dpmpp_2m_karras",
    "lcm": "lcm",
}  # fmt: skip
# What A1111 samplers run with each of its schedulers (None: the sampler's own default).
SCHEDULERS = {None: {}, "automatic": {}, "karras": {"dpmpp_2m_karras": "dpmpp_2m_karras"}}
RESIZE_MODES = {0: "just resize", 1: "crop and resize"}  # A1111's 2 (fill) and 3 (latent): no
# The A1111 name each of our samplers is listed under (A1111 1.9+ lists DPM++ 2M, karras).
A1111_NAMES = {**{name: SAMPLER_NAMES[name] for name in SAMPLERS}, "dpmpp_2m_karras": "DPM++ 2M"}


def _off(value) -> bool:
    """Whether a field is off: unset, false, zero or empty."""
    return value in (None, False, 0, "", [], {})


def _any(value) -> bool:
    """Any value: the field changes nothing here."""
    return True


# Fields fastimg cannot honour but at values that change nothing: (accepted value, what to do).
NEUTRAL = {
    "styles": (_off, "fastimg has no saved styles: put the style's words in the prompt"),
    "subseed": (_any, ""),  # (only read with subseed_strength)
    "subseed_strength": (_off, "variation seeds are not supported: send 0"),
    "seed_resize_from_h": (lambda v: v is None or v <= 0, "send -1"),
    "seed_resize_from_w": (lambda v: v is None or v <= 0, "send -1"),
    "restore_faces": (_off, "face restoration is not supported: send false"),
    "tiling": (_off, "tiling is not supported: send false"),
    "do_not_save_samples": (_any, ""),  # (the server saves nothing)
    "do_not_save_grid": (_any, ""),
    "s_churn": (_off, "send 0"),
    "s_tmin": (_off, "send 0"),
    "s_tmax": (_any, ""),  # (only read with s_churn)
    "s_noise": (lambda v: v in (None, 1), "send 1"),
    "s_min_uncond": (_off, "send 0"),
    "override_settings_restore_afterwards": (_any, ""),
    "script_name": (_off, "scripts are not supported: leave it out"),
    "script_args": (_off, "scripts are not supported: send []"),
    "save_images": (_off, "the server saves nothing: send false and keep the returned images"),
    "include_init_images": (_any, ""),
    "image_cfg_scale": (_any, ""),  # (instruct-pix2pix models only: A1111 ignores it elsewhere)
    "initial_noise_multiplier": (lambda v: v in (None, 1), "send 1"),
    "refiner_checkpoint": (lambda v: v in (None, "", "None"), "a refiner is not supported"),
    "refiner_switch_at": (_any, ""),  # (only read with refiner_checkpoint)
    "disable_extra_networks": (_any, ""),
    "firstpass_image": (_off, "leave it out"),
    "comments": (_any, ""),
    "force_task_id": (_any, ""),
    "infotext": (_off, "leave it out"),
    "latent_mask": (_off, "leave it out"),
    "user": (_any, ""),
}
# Inpainting's fields, read only with a `mask` (any value without one): (accepted, what to send).
# The blur, fill and "only masked" ones are checked as compat_a1111_mask reads them.
WITH_MASK = {
    **dict.fromkeys(
        (
            "mask_blur",
            "mask_blur_x",
            "mask_blur_y",
            "inpainting_fill",
            "inpaint_full_res",
            "inpaint_full_res_padding",
        ),
        (_any, ""),
    ),  # fmt: skip
    "mask_round": (lambda v: v in (None, True), "fastimg binarizes the mask: send true"),
    "inpainting_mask_invert": (lambda v: v in (None, 0, 1), "send 0 (white repainted) or 1"),
}
HANDLED = ("init_images", *RENAMED, "seed", "sampler_name", "sampler_index", "scheduler",
           "width", "height", "batch_size", "n_iter", "resize_mode", "eta", "send_images",
           "override_settings", "alwayson_scripts", "mask")  # fmt: skip
FIELDS = (*HANDLED, *NEUTRAL, *WITH_MASK)


@dataclass(frozen=True)
class A1111Request:
    """An A1111 img2img request read: the init image's bytes, fastimg's fields of its first
    image (the others differ in their seed), the size to resize to, and the answer's shape."""

    data: bytes
    fields: dict
    sampler: str | None  # fastimg's sampler (None: the engines' own)
    size: tuple[int, int]  # (width, height)
    resize_mode: int
    seeds: list[int]
    send_images: bool
    mask: bytes | None  # the mask's bytes (white: repainted), as sent
    mask_invert: bool
    mask_call: dict  # the mask's call settings (compat_a1111_mask.mask_settings), {} without one
    control: tuple[ControlUnit, ...]  # the enabled ControlNet units, in order (() for none)
    given: dict  # the request's fields with A1111's defaults, for the answer's `parameters`


def read_request(payload, model_title: str, max_images: int) -> A1111Request:
    """The A1111 payload (parsed JSON) checked and read; InputError names a field fastimg cannot
    honour, or a value out of range, and what to send instead."""
    if not isinstance(payload, dict):
        raise InputError('the JSON body must be an object: {"init_images": [base64], ...}')
    unknown = [key for key in payload if key not in FIELDS]
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}: fastimg's /sdapi/v1/img2img takes "
                         f"{', '.join(FIELDS)}")  # fmt: skip
    mask = payload.get("mask")
    checks = {**NEUTRAL, **(WITH_MASK if mask is not None else {})}
    for key in ("override_settings", "alwayson_scripts"):
        if not isinstance(payload.get(key) or {}, dict):
            raise InputError(f'{key} must be an object: {{"name": value, ...}}')
    for key, (neutral, fix) in checks.items():
        if key in payload and not _holds(neutral, payload[key]):
            raise InputError(f"the field {key!r} ({payload[key]!r}) is one fastimg cannot "
                             f"honour: {fix or 'leave it out'}")  # fmt: skip
    given = {**DEFAULTS, **{k: v for k, v in payload.items() if v is not None}}
    _check_override_settings(payload.get("override_settings"), model_title)
    _check_scripts(payload.get("alwayson_scripts"))
    images = payload.get("init_images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        raise InputError("init_images must hold one image, as base64 text: "
                         '"init_images": ["iVBORw0..."]')  # fmt: skip
    data = decode_base64(images[0], "init_images")
    sampler = _sampler(payload.get("sampler_name") or payload.get("sampler_index"),
                       payload.get("scheduler"))  # fmt: skip
    _check_eta(payload.get("eta"), sampler)
    width, height = (_whole(given, key, 8) for key in ("width", "height"))
    mode = given.get("resize_mode", 0)
    if mode not in RESIZE_MODES:
        modes = ", ".join(f"{k} ({v})" for k, v in RESIZE_MODES.items())
        raise InputError(f"resize_mode {mode!r} is not supported: send {modes}")
    count = _whole(given, "batch_size", 1) * _whole(given, "n_iter", 1)
    if count > max_images:
        raise InputError(f"batch_size x n_iter is {count} images, more than the {max_images} "
                         "this server runs for one request: ask for fewer")  # fmt: skip
    seeds = _seeds(given["seed"], count)
    fields = {ours: given[theirs] for theirs, ours in RENAMED.items() if theirs in given}
    fields["seed"] = seeds[0]
    if isinstance(fields.get("prompt"), str):  # (another type is refused by name later)
        fields["prompt"], fields["lora_scales"] = lora_tags(fields["prompt"])
    if sampler is not None:
        fields["sampler"] = sampler
    given.update(seed=seeds[0], init_images=None, mask=None, alwayson_scripts={})
    if mask is not None and not isinstance(mask, str):
        raise InputError("mask must be an image as base64 text (white: repainted)")
    mask_data = None if mask is None else decode_base64(mask, "mask")
    invert = bool(given.get("inpainting_mask_invert", 0))
    mask_call = mask_settings(given) if mask is not None else {}
    send_images = bool(given.get("send_images", True))
    control = read_units(payload.get("alwayson_scripts"))
    return A1111Request(data, fields, sampler, (width, height), mode, seeds, send_images,
                        mask=mask_data, mask_invert=invert, mask_call=mask_call, control=control,
                        given=given)  # fmt: skip


def lora_tags(prompt: str) -> tuple[str, str]:
    """A1111's `<lora:NAME:SCALE>` tags taken out of a prompt: the prompt without them, and the
    call's lora_scales ('none' without tags: in A1111 only the LoRAs a prompt names apply)."""
    tags = re.findall(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", prompt)
    text = re.sub(r"\s*<lora:[^>]*>", "", prompt).strip()
    scales = ",".join(f"{name.strip()}:{scale.strip() or 1}" for name, scale in tags)
    return text, scales or "none"


def a1111_message(message: str) -> str:
    """A message of fastimg's checks with the field names as the A1111 client sent them."""
    for theirs, ours in RENAMED.items():
        message = message.replace(f"'{ours}'", f"'{theirs}'")
    return message.replace("'sampler'", "'sampler_name'")


def sampler_list() -> list[dict]:
    """/sdapi/v1/samplers: A1111's names (and aliases) of the samplers fastimg runs."""
    listed: dict[str, list[str]] = {}
    for alias, ours in SAMPLER_ALIASES.items():
        listed.setdefault(ours, []).append(alias)
    return [
        {"name": A1111_NAMES[ours], "aliases": aliases[1:],
         "options": {"scheduler": "karras"} if ours == "dpmpp_2m_karras" else {}}
        for ours, aliases in listed.items()
    ]  # fmt: skip


def _sampler(name, scheduler) -> str | None:
    """fastimg's sampler for A1111's name and scheduler (None: the engines' own)."""
    if name in (None, ""):
        return None
    ours = SAMPLER_ALIASES.get(str(name).lower())
    if ours is None:
        names = ", ".join(A1111_NAMES.values())
        raise InputError(f"sampler_name {name!r} is not one fastimg runs: send one of {names}")
    scheduler = None if scheduler in (None, "") else str(scheduler).lower()
    if scheduler not in SCHEDULERS or (scheduler == "karras" and ours not in SCHEDULERS["karras"]):
        raise InputError(f"scheduler {scheduler!r} with {name!r} is not one fastimg runs: send "
                         "'automatic' (or 'karras' with 'DPM++ 2M')")  # fmt: skip
    return ours


def _check_eta(eta, sampler: str | None) -> None:
    """A1111's eta, where it matters (DDIM, Euler a), must be what fastimg's sampler runs."""
    runs = {"ddim": 0.0, "euler_a": 1.0}.get(sampler)
    if eta is None or runs is None or eta == runs:
        return
    raise InputError(f"eta {eta!r} with {A1111_NAMES[sampler]!r}: fastimg's runs eta {runs:g}; "
                     f"send {runs:g} or leave it out")  # fmt: skip


def _holds(neutral, value) -> bool:
    """Whether `value` is one that changes nothing (a value of the wrong type is not)."""
    try:
        return bool(neutral(value))
    except TypeError:
        return False


def _check_override_settings(settings, model_title: str) -> None:
    """override_settings may only name what the server runs (the model it has loaded)."""
    for key, value in (settings or {}).items():
        if key == "sd_model_checkpoint" and value in (model_title, model_title.split(" [")[0]):
            continue
        raise InputError(f"override_settings {key!r} ({value!r}) is one fastimg cannot "
                         f"honour: this server runs {model_title!r}; leave it out")  # fmt: skip


def _check_scripts(scripts) -> None:
    """alwayson_scripts may only hold ControlNet units and scripts turned off (no args, or
    args [false])."""
    for name, script in (scripts or {}).items():
        if name.lower() == SCRIPT:
            continue  # (read by compat_a1111_control)
        args = script.get("args") if isinstance(script, dict) else script
        if args in (None, [], [False]):
            continue
        raise InputError(f"alwayson_scripts {name!r} is not supported by fastimg: leave it out")


def _whole(given: dict, key: str, least: int) -> int:
    """A whole-number field, at least `least`."""
    value = given[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{key} must be a whole number of at least {least}, got {value!r}")
    return value


def _seeds(seed, count: int) -> list[int]:
    """The seed of each image, as A1111 gives them (seed, seed + 1, ...); -1 draws one."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < -1:
        raise InputError(f"seed must be a whole number (-1: a random one), got {seed!r}")
    if seed == -1:
        seed = secrets.randbelow(SEED_LIMIT - count + 1)
    if seed + count > SEED_LIMIT:
        raise InputError(f"seed {seed} + {count} images goes past the largest seed, "
                         f"{SEED_LIMIT - 1}: send a smaller seed or -1")  # fmt: skip
    return [seed + k for k in range(count)]
