"""Every setting of an img2img call, defined once: its names, type, range, default and help.

The CLI's options (fastimg.cli.options), the job files' columns (workflows.jobfile), the HTTP
API's fields (serve) and the pipeline's checks are all derived from SETTINGS, and one
`CallSettings` value carries a call's settings from any of them into the pipeline. The Python
API keeps diffusers' argument names (`Setting.name`); the CLI, job files and HTTP API use the
shorter `Setting.field` (--steps, steps) where diffusers' name is long.

A new call setting is one more `Setting` in SETTINGS (and a field of CallSettings): the CLI
option, the job-file column and the HTTP field follow from it.
"""

import math
import numbers
from dataclasses import dataclass, fields, replace

from .errors import InputError

SEED_LIMIT = 2**32
MAX_IMAGES = 64
# The text encoder reads 77 tokens (a few hundred characters); longer prompts are cut, and a
# prompt beyond this is refused before it costs memory, time and log space.
MAX_PROMPT_CHARS = 20_000
# What a control image can be made with first (fastimg.media.control_images, ControlNet's own
# annotators): canny's edges, a scribble's strokes; depth, by the engine folder's depth model
# (fastimg.diffusion.depth).
CONTROL_PREPROCESSORS = ("canny", "scribble", "depth")
MODEL_PREPROCESSORS = ("depth",)  # run by a model of the engine folder
# Several ControlNets' values in one job-file cell or HTTP field, in ControlNet order: 1.0;0.5
# (JSON takes a list); a control_preprocess entry `none` takes its image as given.
LIST_SEPARATOR = ";"
AS_GIVEN = "none"
# A video frame whose input differs from the last transformed one by less than this (mean
# absolute difference, pixels from 0 to 1) reuses its output (fastimg video --reuse-threshold).
DEFAULT_REUSE_THRESHOLD = 0.01
# The smallest VAE decoder tile, in pixels (8 latents of an SD VAE).
VAE_MIN_TILE = 64
SHOWN = 80  # characters of a prompt quoted in a message
# What outputs are written as (--format, the HTTP `format` field).
FORMATS = ("png", "jpeg", "webp")

# The samplers fastimg runs (diffusion.samplers has one function each).
# What the masked region starts from (A1111's inpainting_fill 1, 0, 2, 3: diffusion.masked_content).
MASKED_CONTENTS = ("original", "fill", "latent_noise", "latent_nothing")
SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm")

# The arguments only SDXL engine folders take (StableDiffusionXLImg2ImgPipeline's names).
SDXL_ARGUMENTS = (
    "prompt_2",
    "negative_prompt_2",
    "original_size",
    "crops_coords_top_left",
    "target_size",
    "aesthetic_score",
    "negative_aesthetic_score",
)
# The refiner (requires_aesthetics_score) takes the scores; the base alone takes target_size.
REFINER_ONLY = ("aesthetic_score", "negative_aesthetic_score")
BASE_ONLY = ("target_size",)

TEXT, REAL, WHOLE, CHOICE, PAIR = "text", "real", "whole", "choice", "pair"


@dataclass(frozen=True)
class Setting:
    """One call setting: diffusers' name, the CLI/job-file/HTTP name, its type and range."""

    name: str  # the Python API's (diffusers') argument name
    kind: str  # TEXT, REAL, WHOLE, CHOICE or PAIR
    help: str
    default: object = None
    field: str = ""  # the name in job files, HTTP fields and CLI options ('' : `name`)
    flag: str = ""  # its command-line option where that is not --KEY
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    # Refused above this where settings arrive as text (CLI, job files, HTTP) before anything
    # loads; the Python API leaves it to the model's own schedule (which says why).
    cap: float | None = None
    choices: tuple[str, ...] = ()
    sdxl: bool = False  # SDXL engine folders only
    sweeps: bool = False  # `fastimg transform` takes a comma-separated list of values
    per_controlnet: bool = False  # one value for all ControlNets, or a list (LIST_SEPARATOR)

    @property
    def key(self) -> str:
        """The setting's name outside the Python API: job-file column, HTTP field, --option."""
        return self.field or self.name

    @property
    def option(self) -> str:
        """Its command-line option: --negative-prompt."""
        return self.flag or "--" + self.key.replace("_", "-")

    def range_text(self) -> str:
        """The range as click writes it: 0<x<=1, x>=0, 1<=x<=64 ('' when unbounded)."""
        high = self.high if self.high is not None else self.cap
        if self.low is None and high is None:
            return ""
        low = "" if self.low is None else f"{_show(self.low)}{'<' if self.low_open else '<='}"
        return f"{low}x{'' if high is None else f'<={_show(high)}'}"

    def check(self, value):
        """A value given to the Python API checked (numbers of any real type become Python's
        own; None stays None for optional settings)."""
        if value is None:
            return None
        if self.kind in (TEXT, CHOICE):
            if not isinstance(value, str):
                raise InputError(f"{self.name} must be a string, got {type(value).__name__}")
            if self.kind == TEXT:
                check_prompt(value)
            elif value not in self.choices:
                raise InputError(
                    f"unknown {self.name} {value!r}: choose one of {', '.join(self.choices)}"
                )
            return value
        if self.kind == PAIR:
            return _pair(value, self.name, least=0 if self.name.startswith("crops") else 1)
        if self.kind == WHOLE:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{self.name} must be a whole number, got {value!r}")
            number = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(f"{self.name} must be a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise InputError(f"{self.name} must be a finite number, got {value!r}")
        if not self._in_range(number, self.high):
            raise InputError(f"{self.name} must be {self._range_words()}, got {value!r}")
        return number

    def parse(self, raw):
        """A value that arrived as text or JSON (a job-file cell, an HTTP field) converted
        and checked against the setting's range and cap, with click's wording."""
        what = f"Invalid value for {self.key!r}"
        if self.per_controlnet and _is_list(raw):
            return self._parse_list(raw)
        if self.kind == TEXT:
            if not isinstance(raw, str):
                raise InputError(f"{what}: {raw!r} is not text.")
            check_prompt(raw)
            return raw
        if self.kind == PAIR:
            if isinstance(raw, list) and len(raw) == 2 and all(_integer(v) for v in raw):
                raw = f"{raw[0]}x{raw[1]}"  # (JSON: [height, width])
            if not isinstance(raw, str):
                raise InputError(f"{what}: {raw!r} is not HEIGHTxWIDTH.")
            try:
                return parse_pair(raw)
            except ValueError as exc:
                raise InputError(f"{what}: {exc}") from None
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            kind = "text" if self.kind == CHOICE else "a number"
            raise InputError(f"{what}: {raw!r} is not {kind}.")
        if self.kind == CHOICE:
            if str(raw) not in self.choices:
                listed = ", ".join(map(repr, self.choices))
                raise InputError(f"{what}: {str(raw)!r} is not one of {listed}.")
            return str(raw)
        try:
            if self.kind == WHOLE:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                number = int(raw)
            else:
                number = float(raw)
        except (ValueError, OverflowError):
            kind = "integer" if self.kind == WHOLE else "float"
            raise InputError(f"{what}: {raw!r} is not a valid {kind}.") from None
        if self.kind == REAL and not math.isfinite(number):
            raise InputError(f"{what}: {raw!r} is not a finite number.")
        high = self.cap if self.cap is not None else self.high
        if not self._in_range(number, high):
            raise InputError(f"{what}: {number} is not in the range {self.range_text()}.")
        return number

    def _parse_list(self, raw):
        """One value per ControlNet (a JSON list, or text split at LIST_SEPARATOR), each parsed
        (`none` in a preprocessor's list: None); one value alone is that value."""
        items = raw.split(LIST_SEPARATOR) if isinstance(raw, str) else raw
        items = [item.strip() if isinstance(item, str) else item for item in items]
        if not items or any(item in ("", None) or isinstance(item, list) for item in items):
            raise InputError(
                f"Invalid value for {self.key!r}: {raw!r} has an empty value: give one value "
                f"for all ControlNets, or one each separated by {LIST_SEPARATOR!r}."
            )
        values = tuple(
            None if self.kind == CHOICE and item == AS_GIVEN else self.parse(item) for item in items
        )
        return values[0] if len(values) == 1 else values

    def _in_range(self, number: float, high: float | None) -> bool:
        low = self.low
        above = low is None or (number > low if self.low_open else number >= low)
        return above and (high is None or number <= high)

    def _range_words(self) -> str:
        low, high = self.low, self.high
        if high is None:
            return f"at least {_show(low)}"
        if self.low_open:
            return f"in ({_show(low)}, {_show(high)}]"
        return f"between {_show(low)} and {_show(high)}"


def _show(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _is_list(raw) -> bool:
    """Whether a raw value holds several values: a JSON list, or text with LIST_SEPARATOR."""
    return isinstance(raw, list) or (isinstance(raw, str) and LIST_SEPARATOR in raw)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SETTINGS = (
    Setting("prompt", TEXT, "What the image should become."),
    Setting("negative_prompt", TEXT, "What to steer away from."),
    Setting(
        "strength",
        REAL,
        "How much to change, 0 < strength <= 1.",
        default=0.8,
        low=0,
        high=1,
        low_open=True,
        sweeps=True,
    ),
    Setting(
        "num_inference_steps",
        WHOLE,
        "Scheduled steps (strength x steps of them run).",
        default=50,
        field="steps",
        low=1,
        cap=1000,
        sweeps=True,
    ),
    Setting(
        "guidance_scale",
        REAL,
        "Classifier-free guidance scale (1 or less turns it off).",
        default=7.5,
        field="guidance",
        low=0,
        sweeps=True,
    ),
    Setting(
        "seed",
        WHOLE,
        "Same seed, same image (as diffusers with that seed).",
        low=0,
        high=SEED_LIMIT - 1,
        sweeps=True,
    ),
    Setting(
        "num_images_per_prompt",
        WHOLE,
        "Images per call from one seed (diffusers' num_images_per_prompt).",
        default=1,
        field="num_images",
        low=1,
        high=MAX_IMAGES,
    ),
    Setting(
        "scheduler",
        CHOICE,
        "Sampler; default: the model's own scheduler.",
        field="sampler",
        flag="--scheduler",
        choices=SAMPLERS,
    ),
    Setting("prompt_2", TEXT, "SDXL: the second text encoder's prompt [--prompt].", sdxl=True),
    Setting(
        "negative_prompt_2",
        TEXT,
        "SDXL: the second encoder's negative [--negative-prompt].",
        sdxl=True,
    ),
    Setting(
        "original_size",
        PAIR,
        "SDXL: HEIGHTxWIDTH conditioning the UNet on the source size [the input's].",
        sdxl=True,
    ),
    Setting("crops_coords_top_left", PAIR, "SDXL: crop TOP,LEFT conditioning [0,0].", sdxl=True),
    Setting("target_size", PAIR, "SDXL base: HEIGHTxWIDTH [the input's size].", sdxl=True),
    Setting("aesthetic_score", REAL, "SDXL refiner: [6.0].", sdxl=True),
    Setting("negative_aesthetic_score", REAL, "SDXL refiner: [2.5].", sdxl=True),
    Setting(
        "controlnet_conditioning_scale",
        REAL,
        "ControlNet: how strongly the control image steers [0.8, as diffusers' img2img].",
        default=0.8,
        field="control_scale",
        per_controlnet=True,
        low=0,
    ),
    Setting(
        "control_guidance_start",
        REAL,
        "ControlNet: the fraction of the steps before it starts [0].",
        default=0.0,
        field="control_start",
        per_controlnet=True,
        low=0,
        high=1,
    ),
    Setting(
        "control_guidance_end",
        REAL,
        "ControlNet: the fraction of the steps after which it stops [1].",
        default=1.0,
        field="control_end",
        per_controlnet=True,
        low=0,
        high=1,
    ),
    Setting(
        "control_preprocess",
        CHOICE,
        "ControlNet: make the control image first: canny (its edges), scribble (dark lines on "
        "light paper), depth (a depth map, by the engines' depth model: export --depth-model); "
        "without a control image, from the input image [none: as given].",
        choices=CONTROL_PREPROCESSORS,
        per_controlnet=True,
    ),
    Setting(
        "lora_scales",
        TEXT,
        "LoRAs of this call by name, NAME:SCALE,... among those loaded (--lora, serve --lora); "
        "the others are off; none: no LoRA [default: each loaded one at its scale].",
    ),
    # (No range here: a negative one is refused with its fix by diffusion.masks, exit 1.)
    Setting(
        "mask_blur",
        WHOLE,
        "Inpainting: blur the mask by PX pixels first (Gaussian radius, as diffusers' "
        "mask_processor.blur) for a soft seam [0: none].",
    ),
    Setting(
        "padding_mask_crop",
        WHOLE,
        "Inpainting, with --inpaint-area masked: the pixels around the masked region that are "
        "transformed with it at the engine's size (diffusers' padding_mask_crop) [32].",
        field="mask_padding",
    ),
    Setting(
        "masked_content",
        CHOICE,
        "Inpainting: what the masked region starts from (A1111's masked content): original "
        "(the image), fill (painted from the colours around it first), latent_noise (its "
        "latents replaced by the seed's noise), latent_nothing (by zeros); the latent ones "
        "change nothing at strength 1 [original].",
        choices=MASKED_CONTENTS,
    ),
    Setting(
        "vae_tile_size",
        WHOLE,
        "Decode in overlapping tiles of PX pixels (a multiple of 8), blended: each decoder run "
        "sees one tile; slower here (1.3-2.3x the whole at 512 and 1024 px), and the image differs "
        "(README: Tiled VAE decoding) [default: whole].",
        low=VAE_MIN_TILE,
    ),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}
BY_KEY = {setting.key: setting for setting in SETTINGS}
# How outputs are encoded: fields of an HTTP request and options of the batch commands.
FORMAT = Setting("format", CHOICE, "Output format.", choices=FORMATS)
QUALITY = Setting("quality", WHOLE, "JPEG and WebP quality [default: 95].", low=1, high=100)


@dataclass(frozen=True)
class CallSettings:
    """One call's settings, as the CLI, a job file, a video or an HTTP request gave them, by
    diffusers' names; `sdxl` holds the SDXL-only ones that were given, as (name, value)."""

    prompt: str
    negative_prompt: str | None = None
    strength: float = 0.8
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int | None = None
    num_images_per_prompt: int = 1
    scheduler: str | None = None
    controlnet_conditioning_scale: float = 0.8
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    control_preprocess: str | None = None
    lora_scales: str | None = None  # (the Python API also takes a {name: scale} dict)
    control_image: object = None  # a path or a PIL image (not a text setting: no HTTP field)
    mask_image: object = None  # likewise: white is repainted, black kept
    mask_invert: bool = False  # black is repainted, white kept
    mask_blur: int | None = None
    padding_mask_crop: int | None = None  # None: the whole image (A1111's "whole picture")
    keep_unmasked: bool = False  # the original pixels pasted back outside the mask
    masked_content: str | None = None  # None: "original"
    vae_tile_size: int | None = None  # None: the whole image decoded at once
    sdxl: tuple[tuple[str, object], ...] = ()

    def arguments(self) -> dict:
        """The pipeline's keyword arguments (Img2ImgPipeline.__call__), less the image."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sdxl"}
        return {**values, **dict(self.sdxl)}

    def value(self, name: str):
        """A setting's value by its diffusers name, SDXL ones included (None: not given)."""
        if name in SDXL_ARGUMENTS:
            return dict(self.sdxl).get(name)
        return getattr(self, name)

    def with_values(self, **values) -> "CallSettings":
        """A copy with some settings replaced (diffusers' names)."""
        return replace(self, **values)


def from_fields(values: dict, parse: bool = True) -> CallSettings:
    """The CallSettings of {key or name: value} (job-file columns, HTTP fields, CLI options);
    raw text or JSON values are parsed (`parse`) as each setting takes them. Keys that are not
    settings are the caller's to refuse beforehand."""
    given = {}
    for key, value in values.items():
        setting = BY_KEY.get(key) or BY_NAME[key]
        if value is None:
            continue
        given[setting.name] = setting.parse(value) if parse else value
    sdxl = tuple((name, given.pop(name)) for name in SDXL_ARGUMENTS if name in given)
    return CallSettings(**given, sdxl=sdxl)


# What a true-or-false job-file cell or HTTP field may say (JSON's own booleans too).
FLAG_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_flag(value, name: str) -> bool:
    """A true-or-false value as text or JSON arrive: true/false, yes/no, 1/0, or a boolean."""
    if isinstance(value, bool):
        return value
    word = FLAG_WORDS.get(value.strip().lower()) if isinstance(value, str) else None
    if word is None:
        raise InputError(f"{name} must be true or false, got {value!r}")
    return word


def check_prompt(text: str) -> None:
    """Refuse a prompt that is too long or not valid Unicode, quoting only its start."""
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(
            f"a prompt of {len(text)} characters is more than the {MAX_PROMPT_CHARS} fastimg "
            f"takes (the text encoder reads only its first 77 tokens): shorten {quote(text)}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"prompt {quote(text)} is not valid Unicode text (undecodable bytes?): pass it as UTF-8"
        ) from None


def quote(prompt: str) -> str:
    """A prompt as messages show it: its first SHOWN characters."""
    return repr(prompt if len(prompt) <= SHOWN else prompt[:SHOWN] + "...")


def parse_pair(text: str) -> tuple[int, int]:
    """Two whole numbers written HEIGHTxWIDTH or TOP,LEFT: '1024x768' -> (1024, 768); a
    ValueError says what is wrong with any other text."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        first, second = (int(part.strip()) for part in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not two whole numbers such as 1024x768") from None
    if min(first, second) < 0:
        raise ValueError(f"{text!r} has a negative number")
    return first, second


def _pair(value, name: str, least: int) -> tuple[int, int]:
    """(height, width) or (top, left) as two whole numbers >= least."""
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise InputError(f"{name} must be two whole numbers (height, width), got {value!r}")
    pair = tuple(_whole(v, name) for v in value)
    if min(pair) < least or max(pair) > 2**20:
        raise InputError(f"{name} must be two whole numbers in [{least}, 2**20], got {value!r}")
    return pair


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(value)
