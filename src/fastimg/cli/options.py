"""Click options derived from fastimg.settings, and the option groups the batch and video
commands share (engines, outputs, Ray). A call setting's option, type, range and help come
from its `Setting`; commands add only what is their own (sweeps, defaults for rows)."""

import functools
from pathlib import Path

import click

from ..backends import SHAPES
from ..backends.registry import BACKEND_CHOICES, PRECISION_CHOICES
from ..errors import InputError
from ..media.formats import IMAGE_FILE_SUFFIXES
from ..settings import (
    AS_GIVEN,
    BY_NAME,
    CHOICE,
    FORMATS,
    PAIR,
    REAL,
    SETTINGS,
    WHOLE,
    Setting,
    parse_pair,
)
from .common import PathType

_UNSET = object()


class Pair(click.ParamType):
    """Two whole numbers, HEIGHTxWIDTH or TOP,LEFT: 1024x768."""

    name = "pair"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_pair(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def click_type(setting: Setting) -> click.ParamType:
    """The click type that takes `setting` from the command line, with its range (the cap
    where the Python API leaves the upper bound to the model)."""
    high = setting.high if setting.high is not None else setting.cap
    if setting.kind == REAL:
        if setting.low is None and high is None:
            return click.FLOAT
        return click.FloatRange(setting.low, high, min_open=setting.low_open)
    if setting.kind == WHOLE:
        return (
            click.INT if setting.low is None and high is None else click.IntRange(setting.low, high)
        )
    if setting.kind == CHOICE:
        return click.Choice(setting.choices)
    if setting.kind == PAIR:
        return Pair()
    return click.STRING


def setting_option(name: str, help: str | None = None, default=_UNSET, **options):
    """The click option of the call setting `name` (diffusers' name), its help and default
    from fastimg.settings unless the command says otherwise."""
    setting = BY_NAME[name]
    if default is _UNSET:
        default = setting.default
    options.setdefault("type", click_type(setting))
    return click.option(setting.option, default=default, help=help or setting.help, **options)


def sweep_option(name: str, help_more: str = ""):
    """A setting `fastimg transform` sweeps: comma-separated values, each checked."""
    setting = BY_NAME[name]
    default = None if setting.default is None else str(setting.default)
    return setting_option(
        name,
        help=f"{setting.help.rstrip('.')}; a list sweeps{': 0.25,0.5,0.75' * (name == 'strength')}."
        + help_more,
        default=default,
        type=ValueList(click_type(setting)),
        show_default=default is not None,
    )


def prompt_options(command, required: bool = True, help_prompt: str | None = None):
    """--prompt and --negative-prompt, each given at most once (see `given_once`)."""
    command = setting_option("negative_prompt", multiple=True, default=None)(command)
    return setting_option(
        "prompt", help=help_prompt, multiple=True, required=required, default=None
    )(command)


# The settings the batch and video commands declare themselves (sweeps, their own defaults);
# every other setting gets its option from more_setting_options, SDXL's and any added later.
OWN_OPTIONS = (
    "prompt",
    "negative_prompt",
    "strength",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "scheduler",
    "num_images_per_prompt",
)


def _more_settings(exclude: tuple[str, ...]) -> list[Setting]:
    return [s for s in SETTINGS if s.name not in OWN_OPTIONS and s.name not in exclude]


def more_setting_options(command=None, exclude: tuple[str, ...] = ()):
    """An option for every call setting not in OWN_OPTIONS (nor `exclude`): StableDiffusionXL's
    extra arguments, and any setting added to fastimg.settings later."""
    if command is None:
        return functools.partial(more_setting_options, exclude=exclude)
    for setting in reversed(_more_settings(exclude)):
        command = setting_option(setting.name)(command)
    return command


def pop_more_settings(options: dict, exclude: tuple[str, ...] = ()) -> dict:
    """The values more_setting_options' options were given, taken out of a command's
    keyword arguments, by setting key (None where not given)."""
    return {s.key: options.pop(s.option.lstrip("-").replace("-", "_")) for s in
            _more_settings(exclude)}  # fmt: skip


# The ControlNet settings fastimg transform and video take repeated: one value for all
# ControlNets, or one per ControlNet in their order.
CONTROL_SETTINGS = ("controlnet_conditioning_scale", "control_guidance_start",
                    "control_guidance_end", "control_preprocess")  # fmt: skip


def control_list_options(command):
    """--control-scale, --control-start, --control-end and --control-preprocess, each
    repeatable (one per ControlNet; a preprocessor 'none' takes its image as given)."""
    for name in reversed(CONTROL_SETTINGS):
        setting = BY_NAME[name]
        help = f"{setting.help.rstrip('.')}; repeat it for one per ControlNet."
        options = {}
        if setting.choices:
            options["type"] = click.Choice((*setting.choices, AS_GIVEN))
        command = setting_option(name, help=help, multiple=True, default=None, **options)(command)
    return command


def pop_control_lists(options: dict) -> dict:
    """The values control_list_options' options were given, taken out of a command's keyword
    arguments, by diffusers' name: one value, or a tuple of one per ControlNet (left out where
    not given)."""
    values = {}
    for name in CONTROL_SETTINGS:
        given = options.pop(BY_NAME[name].option.lstrip("-").replace("-", "_"))
        if given:
            values[name] = given[0] if len(given) == 1 else tuple(given)
    return values


def scheduler_option(command, help: str | None = None):
    """--scheduler: a sampler, or the model's own scheduler."""
    return setting_option("scheduler", help=help)(command)


class ValueList(click.ParamType):
    """Comma-separated values, each checked by `item` (a click type): 0.25,0.5,0.75."""

    name = "list"

    def __init__(self, item: click.ParamType):
        self.item = item

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(parts):
            self.fail(f"{value!r} has an empty value: write values like 0.25,0.5,0.75", param, ctx)
        return tuple(self.item.convert(part, param, ctx) for part in parts)


def engine_options(command):
    """--engines and the options that choose how they run."""
    options = [
        click.option(
            "--engines",
            type=PathType(path_type=Path),
            required=True,
            help="Engine folder written by fastimg export.",
        ),
        click.option(
            "--backend",
            type=click.Choice(BACKEND_CHOICES),
            default="auto",
            show_default=True,
            help="Engine runtime; auto picks the fastest installed one and says which.",
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISION_CHOICES),
            default="auto",
            show_default=True,
            help="fp32 matches diffusers (the exact path); bf16 (OpenVINO on CPUs with "
            "AVX-512 BF16 or AMX) is the fast path, 3.6x ONNX Runtime fp32 on sd15 on a 2-core "
            "AMX Xeon and 44-47 dB from fp32; fp16 is TensorRT's, and ONNX Runtime CUDA's on "
            "engines exported with --cuda-fp16 (engines exported with --precision fp16 run "
            "fp16 only); int8 runs the int8 graphs of "
            "engines exported with --int8 (OpenVINO: the UNet, the VAE and text encoder where "
            "the export measured them to pay), the rest at the default precision.",
        ),
        click.option(
            "--device",
            type=click.IntRange(0),
            default=None,
            help="CUDA device index for the GPU backends [default: the current device].",
        ),
        click.option(
            "--shapes",
            type=click.Choice(SHAPES),
            default=None,
            help="OpenVINO: also compile each call's exact shapes (static; auto: from a shape's "
            "second call on, so a size seen once pays no compile). By default OpenVINO runs "
            "static where every call has one image size (one input or --size, a video, a "
            "stream: compiled once, then read from the engines' openvino_cache; that first run "
            "takes about twice a dynamic one, so pass dynamic for sizes that come once), else "
            "dynamic, and dynamic in serve; on a 2-core AMX Xeon static ran the 512 stream in "
            "int8 1.2x as fast (bench/results/README.md). In fp32 the images are the same "
            "within a pixel; bf16 and int8 kernels for exact shapes round otherwise, and "
            "int8 runs the VAE graphs the export quantized for exact shapes where it kept one "
            "(fastimg info: openvino-int8-static). ONNX "
            "Runtime CUDA: replay those shapes from a CUDA graph (one shape at a time, its "
            "weights held a second time on the GPU).",
        ),
        click.option(
            "--lora",
            "loras",
            metavar="FILE[:SCALE]",
            multiple=True,
            help="A LoRA .safetensors (diffusers/PEFT or kohya) applied at run time at SCALE "
            "(1.0 by default), on engines exported without it; repeatable. ONNX Runtime and "
            "OpenVINO fp32/bf16.",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def output_options(command):
    """Where outputs go, their names and formats, what they carry, and how progress shows."""
    options = [
        click.option(
            "-o",
            "--output",
            type=PathType(path_type=Path),
            required=True,
            help="Output folder (or one .png/.jpg/.webp file for a single image).",
        ),
        click.option(
            "--name",
            default=None,
            help="Output name template: {stem} {strength} {guidance} {steps} {seed} {sampler} "
            "{index} {row} [default: {stem}-s{strength}-{seed}, plus what else is swept].",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS, case_sensitive=False),
            default=None,
            help="Output format [default: from -o's suffix, else png].",
        ),
        click.option(
            "--quality",
            type=click.IntRange(1, 100),
            default=None,
            help="JPEG and WebP quality [default: 95].",
        ),
        click.option(
            "--no-metadata",
            is_flag=True,
            help="Write no prompt, settings or AI label into the outputs.",
        ),
        click.option(
            "--c2pa-cert",
            type=PathType(path_type=Path),
            default=None,
            help="Sign each output with C2PA Content Credentials: the PEM certificate chain "
            "(signing certificate first); needs --c2pa-key and fastimg[c2pa].",
        ),
        click.option(
            "--c2pa-key",
            type=PathType(path_type=Path),
            default=None,
            help="The PEM private key of --c2pa-cert.",
        ),
        click.option("--overwrite", is_flag=True, help="Replace existing output files."),
        click.option(
            "--skip-existing",
            is_flag=True,
            help="Keep outputs that exist and make only the missing ones (resume a batch).",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress display."),
        click.option(
            "--size",
            default=None,
            help="Resize inputs first: WIDTHxHEIGHT, or one number for the longer side.",
        ),
        click.option(
            "--max-pixels",
            type=click.IntRange(1),
            default=None,
            help="Refuse larger images before decoding them [default: 64 megapixels].",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def given_once(values: tuple[str, ...], option: str) -> str | None:
    """A text option given at most once (click would silently keep the last of several)."""
    if len(values) > 1:
        raise click.UsageError(
            f"{option} was given {len(values)} times: give it once (for several prompts, "
            "write a job file and use fastimg run)"
        )
    return values[0] if values else None


def output_target(output: Path, fmt: str | None) -> tuple[bool, str | None]:
    """Whether -o names one file, and the format the outputs are written in (None: as their
    names say, else PNG)."""
    from ..media.labels import output_format

    single = output.suffix.lower() in IMAGE_FILE_SUFFIXES
    if not single:
        return False, fmt.lower() if fmt else None
    try:
        written = output_format(output, None)
    except InputError as exc:
        raise click.UsageError(f"-o {output}: {exc}") from None
    written = written.lower()
    if fmt is not None and fmt.lower() != written:
        raise click.UsageError(f"-o {output} is {written.upper()} but --format says {fmt}")
    return True, written


def c2pa_signer(cert: Path | None, key: Path | None, no_metadata: bool = False):
    """The C2PA signer of --c2pa-cert and --c2pa-key (checked before any work), or None."""
    if cert is None and key is None:
        return None
    if no_metadata:
        raise click.UsageError(
            "--no-metadata writes no AI label, but C2PA credentials are one (they say the image "
            "was made by fastimg with a trained model): pass one or the other"
        )
    if cert is None or key is None:
        given, missing = (
            ("--c2pa-cert", "--c2pa-key") if key is None else ("--c2pa-key", "--c2pa-cert")
        )
        raise click.UsageError(f"{given} needs {missing} too")  # fmt: skip
    from ..media.c2pa import load_signer

    return load_signer(cert, key)


def check_size(size, manifest, max_side: int) -> None:
    """Refuse a --size outside what the engines take, before any image is processed."""
    from ..media.images import MIN_SIDE

    sides = (size,) if isinstance(size, int) else size
    low, high = max(MIN_SIDE, manifest.vae_scale_factor), max_side
    if not all(low <= side <= high for side in sides):
        raise click.BadParameter(
            f"each side must be between {low} and {high} pixels for these engines",
            param_hint="--size",
        )


def ray_options(command):
    """--ray and how the batch is spread over the Ray cluster."""
    options = [
        click.option(
            "--ray",
            is_flag=True,
            help="Spread the batch over a Ray cluster (workers each load the engines once); "
            "needs fastimg[ray]. Without --ray-address, Ray starts on this machine bound to "
            "127.0.0.1, its dashboard off.",
        ),
        click.option(
            "--ray-address",
            default=None,
            help="Ray cluster to join (host:6379, ray://host:10001, or auto for the one `ray "
            "start` runs here) [default: RAY_ADDRESS, else Ray started on this machine on "
            "127.0.0.1]. A multi-node cluster needs a trusted network and Ray's TLS and token "
            "settings (RAY_USE_TLS, RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT; "
            "RAY_AUTH_MODE=token).",
        ),
        click.option(
            "--ray-workers",
            type=click.IntRange(1, 1024),
            default=None,
            help="Workers (Ray actors), each holding its own engines [default: 2].",
        ),
        click.option(
            "--replica-cpus",
            type=click.FloatRange(0, min_open=True),
            default=None,
            help="CPUs each worker reserves [default: 1]; GPU backends also reserve one GPU.",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def check_ray_options(settings: dict) -> None:
    """Refuse the --ray-* options without --ray, and --ray without Ray installed."""
    from ..errors import require

    given = [f"--{key.replace('_', '-')}" for key in RAY_SETTINGS if settings[key] is not None]
    if not settings["ray"]:
        if given:
            raise click.UsageError(f"{given[0]} needs --ray")
        return
    require("ray", "ray")


RAY_SETTINGS = ("ray_address", "ray_workers", "replica_cpus")


# A1111's default "only masked padding, pixels".
DEFAULT_MASK_PADDING = 32


def mask_options(help_mask: str, folders: bool = False):
    """--mask FILE (a DIR too where `folders`) and --mask-invert, as transform, video and
    stream take them; `help_mask` says what the mask applies to."""

    def add(command):
        command = click.option(
            "--mask-invert", is_flag=True, help="Inpainting: black repaints, white keeps."
        )(command)
        return click.option(
            "--mask",
            type=PathType(exists=True, dir_okay=folders, path_type=Path),
            default=None,
            help=f"Inpainting: white repaints, black keeps; {help_mask}",
        )(command)

    return add


keep_unmasked_option = click.option(
    "--keep-unmasked",
    is_flag=True,
    help="Inpainting: paste the original pixels back outside the (blurred) mask.",
)


def inpaint_options(command):
    """--inpaint-area and --keep-unmasked, beside --mask and the settings' --mask-blur and
    --mask-padding."""
    options = [
        click.option(
            "--inpaint-area",
            type=click.Choice(["whole", "masked"]),
            default="whole",
            show_default=True,
            help="Inpainting: 'masked' transforms only the masked region and --mask-padding "
            "around it, at the engine's size, and pastes it back (A1111's 'only masked').",
        ),
        keep_unmasked_option,
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def apply_inpaint_area(more: dict, area: str) -> None:
    """Set the settings' mask_padding from --inpaint-area: refused without 'masked', 32 by
    default with it."""
    if area != "masked":
        if more.get("mask_padding") is not None:
            raise InputError(
                "--mask-padding pads the region that --inpaint-area masked transforms: add "
                "--inpaint-area masked (or leave out --mask-padding)"
            )
    elif more.get("mask_padding") is None:
        more["mask_padding"] = DEFAULT_MASK_PADDING


# The stream engine's options (StreamSettings' StreamDiffusion fields), as commands take them.
STREAM_ENGINE = ("stream_batch", "rcfg", "similarity", "max_skip", "feedback")


def stream_engine_options(command):
    """StreamDiffusion's options of the stream engine (fastimg stream, video, bench --stream);
    stream_engine_given collects the ones set."""
    options = [
        click.option(
            "--stream-batch",
            is_flag=True,
            help="StreamDiffusion's denoising batch: frames at different steps share one UNet "
            "call (samplers ddim, euler, euler_a, lcm); each frame's output is the one it gets "
            "alone, steps - 1 frames later.",
        ),
        click.option(
            "--rcfg",
            type=click.Choice(["none", "self", "onetime", "full"]),
            default="none",
            show_default=True,
            help="Residual CFG (StreamDiffusion, --scheduler lcm): self or onetime guide without "
            "a negative UNet image per step; none and full: plain CFG where --guidance > 1.",
        ),
        click.option(
            "--similarity",
            type=click.FloatRange(0, 1, min_open=True),
            default=None,
            help="StreamDiffusion's similarity filter threshold (e.g. 0.98): a frame this "
            "similar to the last one transformed is skipped at random, more often the more "
            "similar, reusing the last output [default: off].",
        ),
        click.option(
            "--max-skip",
            type=click.IntRange(0),
            default=10,
            show_default=True,
            help="With --similarity: at most this many frames skipped in a row.",
        ),
        click.option(
            "--feedback",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="Blend this fraction of the last output's latents into each frame's start, for "
            "steadier frames (0: off).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def stream_engine_given(options: dict) -> dict:
    """Pop the stream engine's options from a command's arguments; those set (max_skip only
    with the similarity filter), as StreamSettings' keywords."""
    given = {name: options.pop(name) for name in STREAM_ENGINE}
    chosen = {name: value for name, value in given.items()
              if name != "max_skip" and value not in (False, "none", None, 0.0)}  # fmt: skip
    if "similarity" in chosen:
        chosen["max_skip"] = given["max_skip"]
    return chosen
