"""Batches run: jobs checked once against the engines (`plan`: each job's sampler and the steps
it runs, from the manifest alone, before any work), then run on one pipeline (`run`) or on a
Ray cluster (ray_batch.run_on_ray) with per-image errors and one progress display.

The CLI's transform and run commands are thin layers over this package; Python callers use it
the same way:

    jobs = plan_sweep(collect_sources([Path("in")]), CallSettings("a watercolor"),
                      Sweep(strength=(0.3, 0.6)))
    outputs = check_outputs(name_outputs(jobs, Path("out")))
    report = run(pipe, plan(pipe.manifest, outputs), callback=print)
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FastImgError, InputError
from ..settings import BY_NAME
from .jobs import Job, setting_labels
from .naming import Outputs
from .sheets import cell_image


@dataclass(frozen=True)
class CheckedJob:
    """A job checked against the engines, with the sampler and UNet steps it runs.

    The sampler is the model's own when the job names none; the steps that run are strength x
    its scheduled steps.
    """

    job: Job
    sampler: str
    steps: int


@dataclass(frozen=True)
class Batch:
    """A batch ready to run: its jobs checked, and the existing outputs it keeps."""

    jobs: tuple[CheckedJob, ...]
    existing: tuple[Path, ...] = ()


@dataclass
class Report:
    """What a batch did: files written, files left as they were, and each failure's reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    images: dict[Path, object] = field(default_factory=dict)  # outputs kept for a sheet


def check_jobs(manifest, jobs: list[Job]) -> list[CheckedJob]:
    """Each job checked against `manifest`'s engines, refused naming the job where it cannot run.

    No engine loads: a prompt, sampler or strength-and-steps combination that cannot run is found
    from the manifest alone.
    """
    from ..diffusion.checks import check_call

    checked, resolved = [], {}
    for job in jobs:
        key = job.call.with_values(seed=None)  # the seeds of a sweep share one sampler and plan
        try:
            BY_NAME["seed"].check(job.call.seed)
            if key not in resolved:
                call = check_call(manifest, job.call)
                resolved[key] = (call.sampler, call.steps)
        except InputError as exc:
            raise InputError(f"{job.label}: {exc}") from None
        checked.append(CheckedJob(job, *resolved[key]))
    return checked


def plan(manifest, outputs: Outputs) -> Batch:
    """`outputs`' jobs checked once, before any work: what `run` and `run_on_ray` take."""
    return Batch(tuple(check_jobs(manifest, outputs.jobs)), tuple(outputs.existing))


def run(
    pipe,
    batch: Batch,
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
    """Run every job of `batch` on `pipe`, writing each image as soon as it is made.

    A job that fails (unreadable input, output that cannot be written) is reported and the
    batch goes on; jobs whose outputs all exist are kept when the batch says so. `progress`
    is a BatchProgress (default: a quiet one reporting to `callback`); `signer` adds C2PA
    credentials to each output; `keep_images` keeps a contact sheet's cell of each.
    """
    from ..media.images import MAX_PIXELS, load_image, resize_to
    from ..media.labels import save_image
    from .progress import BatchProgress

    progress = progress or BatchProgress(len(batch.jobs), mode="quiet", callback=callback)
    existing, report = set(batch.existing), Report()
    loaded: tuple[Path, object] | None = None  # sweeps load each input once
    with progress:
        for checked in batch.jobs:
            job = checked.job
            missing = [path for path in job.outputs if path not in existing]
            if not missing:
                report_existing(checked, report, progress)
                continue
            progress.start(job.source.path.name, checked.steps)
            try:
                if loaded is None or loaded[0] != job.source.path:
                    image = load_image(job.source.path, max_pixels=max_pixels or MAX_PIXELS)
                    loaded = (
                        job.source.path,
                        image if resize is None else resize_to(image, resize),
                    )
                results = transform(pipe, job, loaded[1], checked.sampler,
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
                        report.images[path] = cell_image(result, result.info)
                    if on_written is not None:
                        on_written(path)
                progress.finish(str(missing[-1]))
            except FastImgError as exc:
                report.failed.append((job, str(exc)))
                progress.fail(job.label, str(exc))
    return report


def report_existing(checked: CheckedJob, report: Report, progress) -> None:
    """Report a job whose outputs all exist: kept, or failed where one was made otherwise.

    An output was made otherwise when its labels name other settings than the job's.
    """
    job = checked.job
    reasons = (_why_not_made_by(checked, path) for path in job.outputs)
    differs = next((reason for reason in reasons if reason), None)
    if differs is not None:
        report.failed.append((job, differs))
        progress.fail(job.label, differs)
    else:
        report.skipped.extend(job.outputs)
        progress.skip(str(job.outputs[0]))


def _why_not_made_by(checked: CheckedJob, path: Path) -> str | None:
    """Why the existing output `path` is not the image `checked` makes (its labels name other
    settings), or None; an output without labels (--no-metadata) cannot tell, and is kept."""
    from ..media.label_reader import read_labels

    try:
        recorded = read_labels(path)["fastimg"]
    except FastImgError:
        return f"{path} exists but cannot be read: delete it, or pass --overwrite"
    for label, value in setting_labels(checked.job.call, checked.sampler).items():
        old = recorded.get(label)
        if old is not None and not _label_matches(old, value):
            return (
                f"{path} exists but was made with {label.removeprefix('fastimg:')} {old!r}, "
                f"not {value!r}: pass --overwrite to replace it, or write to another -o"
            )
    return None


def _label_matches(recorded: str, value) -> bool:
    """Whether a label's text records `value` (numbers compared as numbers)."""
    if isinstance(value, float):
        try:
            return float(recorded) == value
        except ValueError:
            return False
    return str(recorded) == str(value)


def transform(
    pipe, job: Job, image, sampler: str, callback: Callable | None = None, should_stop=None
) -> list:
    """The images `pipe` makes of `image` with `job`'s settings and the resolved `sampler`
    (`should_stop`: Img2ImgPipeline.call_many's)."""
    stop = {} if should_stop is None else {"should_stop": should_stop}
    return pipe(**_arguments(job, image, sampler), callback=callback, **stop)


def transform_many(
    pipe, jobs: list[tuple], callback: Callable | None = None, should_stop=None
) -> list[list]:
    """What `transform` makes of each (job, image, sampler), in shared runs where it can.

    The jobs that share an image size and settings run as one batch (Img2ImgPipeline.call_many).
    """
    return pipe.call_many([_arguments(*job) for job in jobs], callback, should_stop)


def _arguments(job: Job, image, sampler: str) -> dict:
    """The pipeline's arguments for `job` on `image`, with the sampler resolved."""
    return {**job.call.arguments(), "image": image, "scheduler": sampler}
