"""Batches of img2img jobs: inputs and sweeps planned into jobs with named outputs, checked
whole before any work, then run on one pipeline with per-image errors and one progress display.

The CLI's transform and run commands are thin layers over this module; Python callers use it
the same way:

    jobs = plan_sweep(collect_sources([Path("in")]), "a watercolor", Sweep(strength=(0.3, 0.6)))
    jobs = name_outputs(jobs, Path("out"))
    report = run_jobs(pipe, check_outputs(jobs), callback=print)
"""

import itertools
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import FastImgError, InputError
from ..media.formats import UNLABELLED_SUFFIXES, WRITTEN_SUFFIXES
from ..settings import BY_KEY, BY_NAME, REAL, SEED_LIMIT, CallSettings
from .sources import Source

log = logging.getLogger("fastimg")

# The settings a sweep can vary, in the order names and contact sheets list them.
SWEPT = ("strength", "guidance", "steps", "seed")
# The settings (by key) that name templates take, beside the input's stem, the image's index
# and the job-file row.
NAMED_SETTINGS = ("strength", "guidance", "steps", "seed", "sampler")
NAME_FIELDS = ("stem", *NAMED_SETTINGS, "index", "row")
PREFIX = {"guidance": "g", "steps": "steps"}  # in default names: photo-s0.5-g7.5-steps30-1
MAX_JOBS = 100_000


@dataclass(frozen=True)
class Job:
    """One img2img call of a batch: an input, the call's settings, and the files its images
    are written to."""

    source: Source
    call: CallSettings
    row: int | None = None  # its row in a job file (1: the first job)
    name: str | None = None  # its own output name (a job file's output column)
    outputs: tuple[Path, ...] = ()

    @property
    def label(self) -> str:
        """How messages name this job: its job-file row or its input, and its settings."""
        where = f"row {self.row}: {self.source.path}" if self.row else str(self.source.path)
        return f"{where} (strength {_number(self.call.strength)}, seed {self.call.seed})"

    def value_by_key(self, key: str):
        """A setting's value by its job-file/CLI key (steps, guidance, sampler, ...)."""
        return self.call.value(BY_KEY[key].name)


@dataclass(frozen=True)
class Sweep:
    """Values to try in place of the call's own; each combination is one job per input (an
    empty tuple: the call's value; no seeds here or in the call: a random one per input)."""

    strength: tuple[float, ...] = ()
    guidance: tuple[float, ...] = ()
    steps: tuple[int, ...] = ()
    seeds: tuple[int, ...] | None = None


def variant_seeds(first: int, count: int) -> tuple[int, ...]:
    """`count` seeds from `first` on (first, first + 1, ...), as A1111 numbers a batch."""
    return tuple((first + k) % SEED_LIMIT for k in range(count))


def plan_sweep(sources: list[Source], call: CallSettings, sweep: Sweep = Sweep()) -> list[Job]:
    """One job per input and combination of the swept values (each in place of `call`'s own),
    inputs outermost.

    Without seeds each input draws its own random seed (the same one across its other swept
    values, so a strength sweep compares like with like).
    """
    strengths = sweep.strength or (call.strength,)
    guidances = sweep.guidance or (call.guidance_scale,)
    steps = sweep.steps or (call.num_inference_steps,)
    given_seeds = sweep.seeds or ((call.seed,) if call.seed is not None else None)
    combos = len(strengths) * len(guidances) * len(steps)
    total = len(sources) * combos * (len(given_seeds) if given_seeds else 1)
    if total > MAX_JOBS:
        raise InputError(f"this sweep makes {total} jobs, more than {MAX_JOBS}: split it")
    _check_stems(sources)
    jobs = []
    for source in sources:
        seeds = given_seeds or (secrets.randbelow(SEED_LIMIT),)
        for strength, guidance, step_count, seed in itertools.product(
            strengths, guidances, steps, seeds
        ):
            values = dict(strength=strength, guidance_scale=guidance,
                          num_inference_steps=step_count, seed=seed)  # fmt: skip
            jobs.append(Job(source, call.with_values(**values)))
    return jobs


def draw_seeds(jobs: list[Job]) -> list[Job]:
    """`jobs` with a random seed drawn for each that has none."""
    return [
        job if job.call.seed is not None
        else replace(job, call=job.call.with_values(seed=secrets.randbelow(SEED_LIMIT)))
        for job in jobs
    ]  # fmt: skip


def _check_stems(sources: list[Source]) -> None:
    """Refuse different inputs whose outputs would share names (x.png from two folders)."""
    seen: dict[tuple[Path, str], Path] = {}
    for source in sources:
        first = seen.setdefault((source.subfolder, source.path.stem), source.path)
        if first != source.path:
            raise InputError(
                f"several inputs are named {source.path.stem} ({first}, {source.path}): their "
                "outputs would collide; transform them in separate runs or into separate "
                "folders (or pass their folder, which keeps subfolders apart)"
            )


def varying(jobs: list[Job]) -> tuple[str, ...]:
    """The swept settings that take more than one value among `jobs`, in SWEPT order."""
    return tuple(key for key in SWEPT if len({job.value_by_key(key) for job in jobs}) > 1)


def default_name(jobs: list[Job], from_job_file: bool = False) -> str:
    """The output name template: the input's stem, its strength, what else varies, its seed."""
    parts = ["{row}-{stem}" if from_job_file else "{stem}", "s{strength}"]
    swept = varying(jobs)
    parts += [f"{PREFIX[key]}{{{key}}}" for key in ("guidance", "steps") if key in swept]
    parts.append("{seed}")
    if any(job.call.num_images_per_prompt > 1 for job in jobs):
        parts.append("{index}")
    return "-".join(parts)


class _NameFormatter(string.Formatter):
    """str.format with numbers written short (0.5, not 0.500000) and unknown fields refused."""

    def get_field(self, field_name, args, kwargs):
        if field_name not in NAME_FIELDS:  # no {seed[0]}, {stem.upper}: plain fields only
            return self.get_value(field_name, args, kwargs), field_name
        return super().get_field(field_name, args, kwargs)

    def get_value(self, key, args, kwargs):
        if key not in kwargs:
            fields = ", ".join("{" + name + "}" for name in NAME_FIELDS)
            raise InputError(f"--name has an unknown field {{{key}}}: use {fields}")
        return kwargs[key]

    def format_field(self, value, format_spec):
        if isinstance(value, float) and not format_spec:
            return _number(value)
        return super().format_field(value, format_spec)


def _number(value: float) -> str:
    return format(value, "g")


def name_outputs(
    jobs: list[Job],
    output: Path,
    template: str | None = None,
    fmt: str | None = None,
    single_file: bool = False,
) -> list[Job]:
    """`jobs` with their output paths: OUTPUT/SUBFOLDER/NAME.SUFFIX from the name template
    (`{stem}`, `{strength}`, `{seed}`, ...; default: `default_name`), or OUTPUT itself when it
    names a single file."""
    jobs = draw_seeds(jobs)
    if single_file:
        if len(jobs) != 1 or jobs[0].call.num_images_per_prompt != 1:
            total = sum(job.call.num_images_per_prompt for job in jobs)
            raise InputError(
                f"-o {output} names one file, but {total} images would be written: pass a folder"
            )
        return [replace(jobs[0], outputs=(output,))]
    from_job_file = any(job.row is not None for job in jobs)
    template = template or default_name(jobs, from_job_file)
    _check_template(template)
    suffix = "." + {None: "png", "jpeg": "jpg"}.get(fmt, fmt)
    formatter = _NameFormatter()
    named = []
    for job in jobs:
        paths = []
        count = job.call.num_images_per_prompt
        for index in range(count):
            if job.name is not None:
                own = Path(job.name)
                name = job.name if count == 1 else own.with_stem(f"{own.stem}-{index}")
            else:
                values = _template_values(job, index)
                try:
                    name = formatter.format(template, **values)
                except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
                    raise InputError(f"--name {template!r} cannot be used: {exc}") from None
            path = _output_name(str(name), job, fmt)
            if path.suffix.lower() not in WRITTEN_SUFFIXES:
                path = path.with_name(path.name + suffix)
            paths.append(output / job.source.subfolder / path)
        named.append(replace(job, outputs=tuple(paths)))
    return named


def _template_values(job: Job, index: int) -> dict:
    """What the name template's fields stand for in `job`'s `index`th image."""
    values = {"stem": job.source.path.stem, "index": index, "row": job.row or 0}
    for key in NAMED_SETTINGS:
        value = job.value_by_key(key)
        if BY_KEY[key].kind == REAL:
            value = float(value)
        values[key] = "default" if value is None else value  # (the sampler: the model's own)
    return values


def _output_name(name: str, job: Job, fmt: str | None) -> Path:
    """`name` as a path inside -o, refused when it would leave it, names no file, names a
    format that cannot carry the labels, or contradicts --format."""
    path = Path(name)
    where = f"the output name {name!r} ({job.label})"
    if path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        raise InputError(f"{where} must name a file inside -o, not climb out of it or be empty")
    suffix = path.suffix.lower()
    if suffix in UNLABELLED_SUFFIXES:
        raise InputError(
            f"{where} asks for {suffix[1:].upper()}, which cannot carry the labels: fastimg writes "
            "PNG (.png), JPEG (.jpg, .jpeg) or WebP (.webp)"
        )
    named = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}.get(suffix)
    if fmt is not None and named is not None and named != fmt:
        raise InputError(f"{where} is {named.upper()}, but --format says {fmt}")
    return path


def _check_template(template: str) -> None:
    parts = Path(template).parts
    if Path(template).is_absolute() or ".." in parts or not template.strip():
        raise InputError(
            f"--name {template!r} must be a file name (subfolders allowed), not an absolute "
            "path or one that climbs out of -o with .."
        )


@dataclass
class Outputs:
    """What a planned batch will write, and what it leaves because it is already there."""

    jobs: list[Job]
    existing: list[Path] = field(default_factory=list)


def check_outputs(jobs: list[Job], overwrite: bool = False, skip_existing: bool = False) -> Outputs:
    """Refuse a plan whose outputs collide with each other, overwrite an input, or (without
    --overwrite or --skip-existing) replace files already there."""
    if overwrite and skip_existing:
        raise InputError("--overwrite and --skip-existing contradict each other: pass one")
    seen: dict[Path, Job] = {}
    inputs = {job.source.path.resolve() for job in jobs}
    for job in jobs:
        for path in job.outputs:
            key = path.resolve()
            if key in seen:
                other = seen[key]
                raise InputError(
                    f"two outputs would be written to {path}: {other.label} and {job.label}; "
                    "put what tells them apart into --name (e.g. {strength}, {guidance}, "
                    "{steps}, {seed}, {row}, {index}) or write them to separate folders"
                )
            if key in inputs:
                raise InputError(f"output {path} is one of the input images: choose another -o")
            seen[key] = job
    existing = [path for job in jobs for path in job.outputs if path.exists()]
    if existing and not (overwrite or skip_existing):
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(
            f"{existing[0]} already exists{more}: pass --skip-existing to keep what is there "
            "and make only what is missing, or --overwrite to replace it"
        )
    return Outputs(jobs, existing if skip_existing else [])


@dataclass
class Report:
    """What a batch did: files written, files left as they were, and each failure's reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    images: dict[Path, object] = field(default_factory=dict)  # outputs kept for a sheet


def run_jobs(
    pipe,
    planned: Outputs,
    *,
    quality: int | None = None,
    metadata: bool = True,
    extra_info: dict | None = None,
    resize=None,
    max_pixels: int | None = None,
    progress=None,
    callback: Callable | None = None,
    on_written: Callable[[Path], None] | None = None,
    keep_images: bool = False,
    signer=None,
) -> Report:
    """Run every job on `pipe`, writing each image as soon as it is made.

    A job that fails (unreadable input, output that cannot be written) is reported and the
    batch goes on; jobs whose outputs all exist are skipped when the plan says so. `progress`
    is a BatchProgress (default: a quiet one reporting to `callback`); `signer` adds C2PA
    credentials to each output.
    """
    from ..media.images import MAX_PIXELS, load_image, resize_to
    from ..media.labels import save_image
    from .progress import BatchProgress

    steps = check_jobs(pipe.manifest, planned.jobs)
    progress = progress or BatchProgress(len(planned.jobs), mode="quiet", callback=callback)
    existing, report = set(planned.existing), Report()
    loaded: tuple[Path, object] | None = None  # sweeps load each input once
    with progress:
        for job, (sampler, run_steps) in zip(planned.jobs, steps, strict=True):
            missing = [path for path in job.outputs if path not in existing]
            if not missing:
                settle_made(job, sampler, report, progress)
                continue
            progress.start(job.source.path.name, run_steps)
            try:
                if loaded is None or loaded[0] != job.source.path:
                    image = load_image(job.source.path, max_pixels=max_pixels or MAX_PIXELS)
                    loaded = (
                        job.source.path,
                        image if resize is None else resize_to(image, resize),
                    )
                results = transform(pipe, job, loaded[1], sampler,
                                    lambda step, total: progress.step(step))  # fmt: skip
                for result, path in zip(results, job.outputs, strict=True):
                    if path not in missing:
                        continue
                    info = {**result.info, "fastimg:source": job.source.path.name,
                            **(extra_info or {})}  # fmt: skip
                    save_image(result, path, info, quality=quality, metadata=metadata,
                               signer=signer)  # fmt: skip
                    report.written.append(path)
                    if keep_images:  # a sheet's cell: a thumbnail is enough
                        thumbnail = result.copy()
                        thumbnail.thumbnail((SHEET_CELL, SHEET_CELL))
                        thumbnail.info = dict(result.info)
                        report.images[path] = thumbnail
                    if on_written is not None:
                        on_written(path)
                progress.finish(str(missing[-1]))
            except FastImgError as exc:
                report.failed.append((job, str(exc)))
                progress.fail(job.label, str(exc))
    return report


def settle_made(job: Job, sampler: str, report: Report, progress) -> None:
    """Report a job whose outputs all exist: kept, or failed when one was made otherwise."""
    reasons = [_made_otherwise(path, job, sampler) for path in job.outputs]
    differs = next((reason for reason in reasons if reason), None)
    if differs is not None:
        report.failed.append((job, differs))
        progress.fail(job.label, differs)
    else:
        report.skipped.extend(job.outputs)
        progress.skip(str(job.outputs[0]))


def _made_otherwise(path: Path, job: Job, sampler: str) -> str | None:
    """Why an existing output is not this job's image (its labels name other settings), or
    None; an output without labels (written with --no-metadata) cannot tell, and is kept."""
    from ..media.label_reader import read_labels

    try:
        recorded = read_labels(path)["fastimg"]
    except FastImgError:
        return f"{path} exists but cannot be read: delete it, or pass --overwrite"
    for label, value in setting_labels(job.call, sampler).items():
        key = label.removeprefix("fastimg:")
        old = recorded.get(label)
        if old is not None and not _same(old, value):
            return (
                f"{path} exists but was made with {key} {old!r}, not {value!r}: pass --overwrite "
                "to replace it, or write to another -o"
            )
    return None


def _same(recorded: str, value) -> bool:
    if isinstance(value, float):
        try:
            return float(recorded) == value
        except ValueError:
            return False
    return str(recorded) == str(value)


def transform(pipe, job: Job, image, sampler: str, callback: Callable | None = None) -> list:
    """The images `pipe` makes of `image` with `job`'s settings and the resolved `sampler`."""
    return pipe(**call_arguments(job, image, sampler), callback=callback)


def transform_many(pipe, jobs: list[tuple], callback: Callable | None = None) -> list[list]:
    """For each (job, image, sampler), what `transform` makes of it; the jobs that share an
    image size and settings run as one batch (Img2ImgPipeline.call_many)."""
    return pipe.call_many([call_arguments(*job) for job in jobs], callback)


def call_arguments(job: Job, image, sampler: str) -> dict:
    """The pipeline's arguments for `job` on `image`, with the sampler resolved."""
    return {**job.call.arguments(), "image": image, "scheduler": sampler}


def setting_labels(call: CallSettings, sampler: str) -> dict:
    """The fastimg:* settings labels of an image made with `call` on `sampler`, as the
    pipeline writes them."""
    return {
        "fastimg:prompt": call.prompt,
        "fastimg:negative_prompt": call.negative_prompt or "",
        "fastimg:seed": call.seed,
        "fastimg:strength": float(call.strength),
        "fastimg:steps": call.num_inference_steps,
        "fastimg:guidance": float(call.guidance_scale),
        "fastimg:scheduler": sampler,
    }


def check_jobs(manifest, jobs: list[Job]) -> list[tuple[str, int]]:
    """Each job's sampler and the steps it runs, checked against `manifest`'s engines; a
    prompt, sampler or strength-and-steps combination that cannot run is refused here,
    naming the job, before any work."""
    from ..diffusion.checks import check_call

    planned, checked = [], {}
    for job in jobs:
        key = job.call.with_values(seed=None)  # the seeds of a sweep share one sampler and plan
        try:
            BY_NAME["seed"].check(job.call.seed)
            if key not in checked:
                call = check_call(manifest, job.call)
                checked[key] = (call.sampler, call.steps)
        except InputError as exc:
            raise InputError(f"{job.label}: {exc}") from None
        planned.append(checked[key])
    return planned


MAX_SHEET_SIDE = 64  # rows or columns (grid.MAX_ROWS, grid.MAX_COLUMNS)
SHEET_CELL = 256  # the longer side of a contact sheet's cells
SHEET_LABELS = {"strength": "strength", "guidance": "guidance", "steps": "steps", "seed": "seed",
                "index": "image"}  # fmt: skip


def plan_sheets(planned: Outputs, output: Path) -> dict[Path, list[Job]]:
    """One contact sheet per input, OUTPUT/SUBFOLDER/STEM-grid.png, of its jobs' images."""
    sheets: dict[Path, list[Job]] = {}
    for job in planned.jobs:
        sheet = output / job.source.subfolder / f"{job.source.path.stem}-grid.png"
        jobs = sheets.setdefault(sheet, [])
        if jobs and jobs[0].source.path != job.source.path:
            raise InputError(
                f"{jobs[0].source.path} and {job.source.path} would share the contact sheet "
                f"{sheet}: give inputs of one name in separate runs, or leave out --grid"
            )
        jobs.append(job)
    outputs = {path.resolve(): job for job in planned.jobs for path in job.outputs}
    for sheet, jobs in sheets.items():
        rows, columns, _ = sheet_layout(jobs)
        if max(len(rows), len(columns)) > MAX_SHEET_SIDE:
            raise InputError(
                f"the contact sheet {sheet} would have {len(rows)} rows and {len(columns)} "
                f"columns, more than {MAX_SHEET_SIDE}: sweep fewer values, or leave out --grid"
            )
    for sheet in sheets:
        if sheet.resolve() in outputs:
            raise InputError(
                f"the contact sheet {sheet} would replace the output of "
                f"{outputs[sheet.resolve()].label}: choose another --name"
            )
    return sheets


def check_sheets(sheets: dict[Path, list[Job]], overwrite: bool, skip_existing: bool) -> None:
    """Refuse to replace a contact sheet of an earlier run unless told to (--skip-existing
    rewrites it with the kept and the new images)."""
    existing = [sheet for sheet in sheets if sheet.exists()]
    if existing and not (overwrite or skip_existing):
        raise InputError(
            f"{existing[0]} already exists: pass --overwrite to replace it (or --skip-existing "
            "to make the missing images and redraw the sheet)"
        )


def sheet_layout(jobs: list[Job]) -> tuple[list[str], list[str], dict[Path, tuple[str, str]]]:
    """Rows, columns and each output's (row, column): the first swept setting across, the
    others down."""
    several = any(job.call.num_images_per_prompt > 1 for job in jobs)
    keys = list(varying(jobs)) + (["index"] if several else [])
    rows: list[str] = []
    columns: list[str] = []
    places: dict[Path, tuple[str, str]] = {}
    for job in jobs:
        for index, path in enumerate(job.outputs):
            values = {**{key: job.value_by_key(key) for key in SWEPT}, "index": index}
            labels = [f"{SHEET_LABELS[key]} {_value(values[key])}" for key in keys]
            column, row = (labels[0] if labels else ""), " · ".join(labels[1:])
            columns += [column] if column not in columns else []
            rows += [row] if row not in rows else []
            places[path] = (row, column)
    return rows, columns, places


def _value(value) -> str:
    return _number(value) if isinstance(value, float) else str(value)


def write_sheets(
    sheets: dict[Path, list[Job]],
    planned: Outputs,
    report: Report,
    metadata: bool = True,
    signer=None,
) -> list[Path]:
    """Draw and write each contact sheet from the images just made and those kept; failed
    images are grey cells. Returns the sheets written."""
    from PIL import Image

    from ..media.grid import contact_sheet
    from ..media.label_reader import read_labels
    from ..media.labels import save_image

    failed = {path for job, _ in report.failed for path in job.outputs}
    written = []
    for sheet, jobs in sheets.items():
        rows, columns, places = sheet_layout(jobs)
        if len(places) < 2:
            continue  # one image is its own sheet
        cells, settings = {}, None
        for path, place in places.items():
            image = report.images.get(path)
            if path in failed:
                cells[place] = None  # drawn as a failed cell
                continue
            if image is None and path.exists():
                try:
                    with Image.open(path) as opened:
                        image = opened.convert("RGB")
                    image.info = {**read_labels(path)["fastimg"]}
                except (OSError, ValueError, FastImgError) as exc:
                    log.warning("%s left out of the contact sheet %s: %s", path, sheet, exc)
                    continue
            if image is not None:
                cells[place] = image
                if settings is None and "fastimg:scheduler" in image.info:
                    settings = {k: v for k, v in image.info.items() if k.startswith("fastimg:")}
        if not any(cell is not None for cell in cells.values()):
            log.warning("no contact sheet for %s: none of its images was made", sheet)
            continue
        title = f"{jobs[0].source.path.name}: {jobs[0].call.prompt}"
        picture = contact_sheet(cells, rows, columns, title=title)
        labelled = metadata and settings is not None  # (images kept without labels: none)
        settings = {**(settings or {}), "fastimg:sheet": "contact sheet"}
        save_image(picture, sheet, settings, metadata=labelled, signer=signer)
        written.append(sheet)
    return written
