"""Where a batch's images go: output names from a template (or a job file's own), and the
plan of outputs checked against each other, the inputs and the files already there.

    jobs = name_outputs(jobs, Path("out"), "{stem}-{strength}-{seed}")
    outputs = check_outputs(jobs, skip_existing=True)
"""

import string
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InputError
from ..media.formats import UNLABELLED_SUFFIXES, WRITTEN_SUFFIXES
from ..settings import BY_KEY, REAL
from .jobs import Job, draw_seeds, shown, varying

# The settings (by key) that name templates take, beside the input's stem, the image's index
# and the job-file row.
NAMED_SETTINGS = ("strength", "guidance", "steps", "seed", "sampler")
NAME_FIELDS = ("stem", *NAMED_SETTINGS, "index", "row")
SWEPT_NAME_PREFIX = {"guidance": "g", "steps": "steps"}  # default names: photo-s0.5-g7.5-steps30-1


def default_name(jobs: list[Job], from_job_file: bool = False) -> str:
    """The output name template: the input's stem, its strength, what else varies, its seed."""
    parts = ["{row}-{stem}" if from_job_file else "{stem}", "s{strength}"]
    swept = varying(jobs)
    parts += [f"{SWEPT_NAME_PREFIX[key]}{{{key}}}" for key in ("guidance", "steps") if key in swept]
    parts.append("{seed}")
    if any(job.image_count > 1 for job in jobs):
        parts.append("{index}")
    return "-".join(parts)


class _NameFormatter(string.Formatter):
    """str.format with numbers written short (0.5, not 0.500000) and unknown fields refused."""

    def get_field(self, field_name, args, kwargs):
        """A plain field's value; anything else (indexing, attributes) is refused."""
        if field_name not in NAME_FIELDS:  # no {seed[0]}, {stem.upper}: plain fields only
            return self.get_value(field_name, args, kwargs), field_name
        return super().get_field(field_name, args, kwargs)

    def get_value(self, key, args, kwargs):
        """The value of a known field, else an error listing the fields."""
        if key not in kwargs:
            fields = ", ".join("{" + name + "}" for name in NAME_FIELDS)
            raise InputError(f"--name has an unknown field {{{key}}}: use {fields}")
        return kwargs[key]

    def format_field(self, value, format_spec):
        """Floats written short (0.5) unless the template gives a format."""
        if isinstance(value, float) and not format_spec:
            return shown(value)
        return super().format_field(value, format_spec)


def name_outputs(
    jobs: list[Job],
    output: Path,
    template: str | None = None,
    fmt: str | None = None,
    single_file: bool = False,
) -> list[Job]:
    """`jobs` with their output paths, from the name template or a job's own name.

    OUTPUT/SUBFOLDER/NAME.SUFFIX from the template (`{stem}`, `{strength}`, `{seed}`, ...;
    default: `default_name`), or OUTPUT itself when it names a single file.
    """
    jobs = draw_seeds(jobs)
    if single_file:
        if len(jobs) != 1 or jobs[0].image_count != 1:
            total = sum(job.image_count for job in jobs)
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
        for index in range(job.image_count):
            if job.name is not None:
                own = Path(job.name)
                name = job.name if job.image_count == 1 else own.with_stem(f"{own.stem}-{index}")
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
    """Refuse a template that is empty, absolute or climbs out of -o."""
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
    """The outputs of `jobs`, refused where they collide, hit an input or exist already.

    Files already there are refused unless `overwrite` (replace them) or `skip_existing` (keep
    them: `Outputs.existing`).
    """
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
