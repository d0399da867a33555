"""The batch commands: transform (files, folders, sweeps, variants, contact sheets), run (job
files) and inspect (what an image carries). Each is a thin layer over fastimg.workflows."""

import functools
import sys
from pathlib import Path

import click

from ..backends import SHAPES
from ..backends.registry import BACKEND_CHOICES, PRECISION_CHOICES
from ..diffusion.schedules import SAMPLERS
from ..errors import InputError
from ..media.formats import IMAGE_FILE_SUFFIXES
from ..settings import SDXL_ARGUMENTS, SEED_LIMIT, from_fields
from .common import domain_errors, echo_err

FORMATS = ("png", "jpeg", "webp")


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


STRENGTH = click.FloatRange(0, 1, min_open=True)
STEPS = click.IntRange(1, 1000)
GUIDANCE = click.FloatRange(0)
SEED = click.IntRange(0, 2**32 - 1)


class Pair(click.ParamType):
    """Two whole numbers, HEIGHTxWIDTH or TOP,LEFT: 1024x768."""

    name = "pair"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("x", ",").split(",")
        try:
            first, second = (int(part.strip()) for part in parts)
        except ValueError:
            self.fail(f"{value!r} is not two whole numbers such as 1024x768", param, ctx)
        if min(first, second) < 0:
            self.fail(f"{value!r} has a negative number", param, ctx)
        return first, second


def sdxl_options(command):
    """StableDiffusionXLImg2ImgPipeline's extra arguments (SDXL engine folders only)."""
    options = [
        click.option("--prompt-2", help="SDXL: the second text encoder's prompt [--prompt]."),
        click.option(
            "--negative-prompt-2", help="SDXL: the second encoder's negative [--negative-prompt]."
        ),
        click.option(
            "--original-size",
            type=Pair(),
            help="SDXL: HEIGHTxWIDTH conditioning the UNet on the source size [the input's].",
        ),
        click.option(
            "--crops-coords-top-left", type=Pair(), help="SDXL: crop TOP,LEFT conditioning [0,0]."
        ),
        click.option(
            "--target-size", type=Pair(), help="SDXL base: HEIGHTxWIDTH [the input's size]."
        ),
        click.option("--aesthetic-score", type=float, help="SDXL refiner: [6.0]."),
        click.option("--negative-aesthetic-score", type=float, help="SDXL refiner: [2.5]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


scheduler_option = click.option(
    "--scheduler",
    type=click.Choice(SAMPLERS),
    default=None,
    help="Sampler; default: the model's own scheduler.",
)


def engine_options(command):
    """--engines and the options that choose how they run."""
    options = [
        click.option(
            "--engines",
            type=click.Path(path_type=Path),
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
            help="fp32 matches diffusers; bf16 (OpenVINO on CPUs with bf16) is about twice as "
            "fast; fp16 is TensorRT's; int8 runs the int8 UNet of engines exported with --int8 "
            "(OpenVINO).",
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
            default="dynamic",
            show_default=True,
            help="OpenVINO: also compile each call's exact shapes (static; auto: from a shape's "
            "second call on, so a size seen once pays no compile). Images are the same either "
            "way.",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def output_options(command):
    """Where outputs go, their names and formats, what they carry, and how progress shows."""
    options = [
        click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
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
            type=click.Path(path_type=Path),
            default=None,
            help="Sign each output with C2PA Content Credentials: the PEM certificate chain "
            "(signing certificate first); needs --c2pa-key and fastimg[c2pa].",
        ),
        click.option(
            "--c2pa-key",
            type=click.Path(path_type=Path),
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


def one(values: tuple[str, ...], option: str) -> str | None:
    """A text option given at most once (click would silently keep the last of several)."""
    if len(values) > 1:
        raise click.UsageError(
            f"{option} was given {len(values)} times: give it once (for several prompts, "
            "write a job file and use fastimg run)"
        )
    return values[0] if values else None


def _output_target(output: Path, fmt: str | None) -> tuple[bool, str | None]:
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


def _check_size(size, manifest, max_side: int) -> None:
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
            "needs fastimg[ray].",
        ),
        click.option(
            "--ray-address",
            default=None,
            help="Ray cluster to join [default: RAY_ADDRESS, else Ray started on this machine].",
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


def _check_ray_options(settings: dict) -> None:
    """Refuse the --ray-* options without --ray, and --ray without Ray installed."""
    from ..errors import require

    given = [f"--{key.replace('_', '-')}" for key in RAY_SETTINGS if settings[key] is not None]
    if not settings["ray"]:
        if given:
            raise click.UsageError(f"{given[0]} needs --ray")
        return
    require("ray", "ray")


RAY_SETTINGS = ("ray_address", "ray_workers", "replica_cpus")


def _run(jobs, single: bool, settings: dict, grid: bool = False) -> None:
    """Name, check and run `jobs` with the shared options; print each output's path."""
    from ..diffusion.pipeline import Img2ImgPipeline
    from ..media.images import parse_size
    from ..workflows import runner
    from ..workflows.naming import check_outputs, name_outputs
    from ..workflows.progress import BatchProgress
    from ..workflows.sheets import check_sheets, plan_sheets, write_sheets

    resize = parse_size(settings["size"]) if settings["size"] is not None else None
    try:  # a plan that cannot work is a usage error, refused before anything loads
        jobs = name_outputs(
            jobs, settings["output"], settings["name"], settings["fmt"], single_file=single
        )
        planned = check_outputs(jobs, settings["overwrite"], settings["skip_existing"])
        sheets = plan_sheets(planned, settings["output"]) if grid else {}
        check_sheets(sheets, settings["overwrite"], settings["skip_existing"])
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    _check_ray_options(settings)
    signer = c2pa_signer(settings["c2pa_cert"], settings["c2pa_key"], settings["no_metadata"])
    load_options = {
        "folder": settings["engines"],
        "backend": settings["backend"],
        "precision": settings["precision"],
        "device": settings["device"],
        "shapes": settings["shapes"],
    }
    if settings["ray"]:
        run = _ray_runner(planned, load_options, resize, settings)
    else:
        pipe = Img2ImgPipeline.from_engines(**load_options)
        if resize is not None:
            _check_size(resize, pipe.manifest, pipe.max_side)
        batch = runner.plan(pipe.manifest, planned)  # every job can run, before the first does
        run = functools.partial(runner.run, pipe, batch)
    mode = "quiet" if settings["quiet"] else "auto"
    progress = BatchProgress(len(planned.jobs), stream=sys.stderr, mode=mode)
    report = run(
        quality=settings["quality"],
        metadata=not settings["no_metadata"],
        extra_info={"fastimg:engines": str(settings["engines"])},
        resize=resize,
        max_pixels=settings["max_pixels"],
        progress=progress,
        on_written=lambda path: progress.aside(lambda: click.echo(str(path))),
        keep_images=bool(sheets),
        signer=signer,
    )
    metadata = not settings["no_metadata"]
    for path in write_sheets(sheets, report, metadata, signer):
        click.echo(str(path))
    if report.skipped:
        echo_err(f"kept {len(report.skipped)} output(s) already there (--skip-existing)")
    if report.failed:
        if settings["quiet"]:  # (otherwise the progress display named each as it failed)
            for job, reason in report.failed:
                echo_err(f"error: {job.label}: {reason}")
        failed = sum(job.image_count for job, _ in report.failed)
        total = sum(job.image_count for job in planned.jobs)
        raise click.ClickException(
            f"{failed} of {total} images failed (each is named above); the others are written"
        )


def _ray_runner(planned, load_options: dict, resize, settings: dict):
    """run_on_ray with the --ray options, once every job is checked on this machine (from
    the engines' manifest: no engines load here)."""
    from ..engine_folder.manifest import DEFAULT_MAX_SIDE, load_manifest
    from ..workflows import runner
    from ..workflows.ray_batch import run_on_ray

    manifest = load_manifest(load_options["folder"])
    if resize is not None:
        _check_size(resize, manifest, manifest.max_side or DEFAULT_MAX_SIDE)
    return functools.partial(
        run_on_ray,
        runner.plan(manifest, planned),
        load_options,
        workers=settings["ray_workers"] or 2,
        cpus=settings["replica_cpus"],
        address=settings["ray_address"],
    )


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prompt", multiple=True, required=True, help="What the image should become.")
@click.option("--negative-prompt", multiple=True, help="What to steer away from.")
@click.option(
    "--strength",
    type=ValueList(STRENGTH),
    default="0.8",
    show_default=True,
    help="How much to change, 0 < strength <= 1; a list sweeps: 0.25,0.5,0.75.",
)
@click.option(
    "--steps",
    type=ValueList(STEPS),
    default="50",
    show_default=True,
    help="Scheduled steps (strength x steps of them run); a list sweeps.",
)
@click.option(
    "--guidance",
    type=ValueList(GUIDANCE),
    default="7.5",
    show_default=True,
    help="Classifier-free guidance scale (1 or less turns it off); a list sweeps.",
)
@click.option(
    "--seed",
    type=ValueList(SEED),
    default=None,
    help="Same seed, same image (as diffusers with that seed); a list sweeps. Random (one per "
    "input) if omitted.",
)
@click.option(
    "--variants",
    type=click.IntRange(1, 1000),
    default=None,
    help="N variants from N seeds: --seed and the N-1 after it (random if no --seed).",
)
@scheduler_option
@click.option(
    "--num-images",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Images per call from one seed (diffusers' num_images_per_prompt).",
)
@click.option("--recursive", "-r", is_flag=True, help="Also take images in subfolders.")
@click.option(
    "--grid",
    is_flag=True,
    help="Also write a labelled contact sheet per input (STEM-grid.png) of the swept values.",
)
@sdxl_options
@output_options
@engine_options
@ray_options
@domain_errors
def transform(images, prompt, negative_prompt, strength, steps, guidance, seed, variants,
              scheduler, num_images, recursive, grid, **settings) -> None:  # fmt: skip
    """Transform IMAGES (files or folders) toward --prompt with the engines in --engines.

    Lists sweep: --strength 0.25,0.5,0.75 makes three images per input, named apart
    (photo-s0.25-42.png, ...); --variants 4 makes four seeds; --grid adds a contact sheet.
    """
    import secrets

    from ..workflows.jobs import Sweep, plan_sweep, variant_seeds
    from ..workflows.sources import collect_sources

    prompt, negative_prompt = one(prompt, "--prompt"), one(negative_prompt, "--negative-prompt")
    sdxl = {name: settings.pop(name) for name in SDXL_ARGUMENTS}
    if settings["skip_existing"] and seed is None:
        raise click.UsageError(
            "--skip-existing needs --seed: random seeds give new names every run, so nothing "
            "would be found to skip"
        )
    if variants is not None:
        if seed is not None and len(seed) > 1:
            raise click.UsageError("--variants takes one --seed to count from, not a list")
        first = seed[0] if seed else secrets.randbelow(SEED_LIMIT)
        seed = variant_seeds(first, variants)
    single, settings["fmt"] = _output_target(settings["output"], settings["fmt"])
    if grid and single:
        raise click.UsageError("--grid writes a contact sheet beside the outputs: -o a folder")
    sweep = Sweep(strength=strength, guidance=guidance, steps=steps, seeds=seed)
    sources = collect_sources(list(images), recursive=recursive, exclude=settings["output"])
    given = {"prompt": prompt, "negative_prompt": negative_prompt, "sampler": scheduler,
             "num_images": num_images, **sdxl}  # fmt: skip
    try:
        jobs = plan_sweep(sources, from_fields(given, parse=False), sweep)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    _run(jobs, single, settings, grid=grid)


@click.command("run")
@click.argument("jobs", type=click.Path(path_type=Path))
@click.option("--prompt", multiple=True, help="Prompt of rows that have none.")
@click.option("--negative-prompt", multiple=True, help="Negative prompt of rows that have none.")
@click.option("--strength", type=STRENGTH, default=None, help="For rows without  [default: 0.8]")
@click.option("--steps", type=STEPS, default=None, help="For rows without  [default: 50]")
@click.option("--guidance", type=GUIDANCE, default=None, help="For rows without  [default: 7.5]")
@click.option("--seed", type=SEED, default=None, help="For rows without [default: random].")
@click.option(
    "--scheduler", type=click.Choice(SAMPLERS), default=None, help="For rows without one."
)
@output_options
@engine_options
@ray_options
@domain_errors
def run_jobs(jobs, prompt, negative_prompt, strength, steps, guidance, seed, scheduler,
             **settings) -> None:  # fmt: skip
    """Run the jobs of a CSV (with a header row) or JSONL file.

    Columns: image, the settings (prompt, negative_prompt, strength, steps, guidance, seed,
    num_images, sampler, the SDXL ones), output (only image is required; the options fill what
    a row leaves empty). Every row is checked
    before the first image is made; outputs are named {row}-{stem}-s{strength}-{seed} unless
    a row's output column or --name says otherwise.
    """
    from ..workflows.jobfile import read_job_file

    single, settings["fmt"] = _output_target(settings["output"], settings["fmt"])
    defaults = {
        "prompt": one(prompt, "--prompt"),
        "negative_prompt": one(negative_prompt, "--negative-prompt"),
        "strength": strength,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "sampler": scheduler,
    }
    planned = read_job_file(jobs, defaults)
    if settings["skip_existing"] and seed is None and any(j.call.seed is None for j in planned):
        raise click.UsageError(
            "--skip-existing needs a seed for every row (a seed column or --seed): random "
            "seeds give new names every run, so nothing would be found to skip"
        )
    _run(planned, single, settings)


@click.command("inspect")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per image.")
@domain_errors
def inspect_images(images: tuple[Path, ...], as_json: bool) -> None:
    """Print what IMAGES carry: generation parameters, the AI-generated label, C2PA."""
    import json

    from ..media.label_reader import read_labels

    for path in images:
        labels = read_labels(path)
        if labels.get("c2pa"):
            labels["c2pa_manifest"] = _c2pa_summary(path)
        if as_json:
            click.echo(json.dumps({"path": str(path), **labels}, ensure_ascii=False))
            continue
        width, height = labels["size"]
        click.echo(f"{path}: {labels['format']} {width}x{height}")
        source = labels.get("digital_source_type")
        click.echo(f"  AI-generated label (IPTC digital source type): {source or 'none'}")
        if labels.get("creator_tool"):
            click.echo(f"  made with: {labels['creator_tool']}")
        click.echo(f"  C2PA manifest: {_c2pa_line(labels.get('c2pa_manifest'), labels)}")
        text = labels.get("parameters")
        if text:
            click.echo("  parameters:")
            for line in text.splitlines():
                click.echo(f"    {line}")
        else:
            click.echo("  parameters: none")


def _c2pa_summary(path: Path) -> dict | str:
    """c2pa's own reading of an image's manifest, or why it could not be read."""
    from ..errors import FastImgError

    try:
        from ..media.c2pa import read_manifest

        return read_manifest(path) or "no active manifest"
    except FastImgError as exc:
        return f"cannot be read here: {exc}"


def _c2pa_line(summary, labels: dict) -> str:
    if not labels.get("c2pa"):
        return "none"
    if not isinstance(summary, dict):
        return f"present ({summary})"
    state = summary.get("validation_state")
    signer = summary.get("signer") or "an unnamed signer"
    failures = ", ".join(summary.get("failures") or []) or "none"
    return f"{state}, signed by {signer} (failures: {failures})"
