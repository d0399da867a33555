"""A batch spread over a Ray cluster with Ray Data (`fastimg run/transform --ray`).

Its jobs come checked (runner.plan, on the driver from the engines' manifest alone: nothing
loads there), outputs that already exist are reported there too, and the rest run on a pool of
Ray actors,
each loading the engines once. Workers write each image with the usual atomic writes; a worker
that dies is restarted and its job retried, rewriting the same file, so every output exists
once. The driver streams the results into the one progress display and the Report.
"""

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import FastImgError, InputError


class BatchWorker:
    """One Ray Data actor: loads the engines once, then runs the job of each index it is given."""

    def __init__(self, load_options: dict, jobs: tuple, existing: tuple, run_options: dict):
        from ..diffusion.pipeline import Img2ImgPipeline

        self.pipe = Img2ImgPipeline.from_engines(**load_options)
        self.jobs, self.existing, self.run_options = jobs, set(existing), run_options

    def __call__(self, batch: dict) -> dict:
        """The outcome of each job in `batch` ({"index": [...]}), as JSON text per row."""
        import numpy as np

        indices = [int(index) for index in batch["index"]]
        results = [json.dumps(self.run(index)) for index in indices]
        return {"index": np.array(indices, dtype=np.int64), "result": np.array(results)}

    def run(self, index: int) -> dict:
        """Run job `index` with runner.run; its written and kept paths and its failure."""
        from .runner import Batch, run

        checked = self.jobs[index]
        kept = tuple(path for path in checked.job.outputs if path in self.existing)
        report = run(self.pipe, Batch((checked,), kept), **self.run_options)
        return {
            "written": [str(path) for path in report.written],
            "skipped": [str(path) for path in report.skipped],
            "failed": [reason for _, reason in report.failed],
        }


def run_on_ray(
    batch,
    load_options: dict,
    *,
    workers: int,
    cpus: float | None = None,
    address: str | None = None,
    progress=None,
    callback: Callable | None = None,
    on_written: Callable[[Path], None] | None = None,
    keep_images: bool = False,
    **run_options,
):
    """Run every job of `batch` (runner.plan's) on `workers` Ray actors: runner.run's outcome.

    Each actor loads the engines once, with `load_options` (Img2ImgPipeline.from_engines'
    arguments).
    """
    from .progress import BatchProgress
    from .runner import Report

    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"--ray-workers must be a whole number >= 1, got {workers!r}")
    progress = progress or BatchProgress(len(batch.jobs), mode="quiet", callback=callback)
    report = Report()
    with progress:
        todo = _left_to_run(batch, report, progress)
        if todo:
            rows = _results(batch, todo, load_options, workers, cpus, address, run_options)
            for index, outcome in rows:
                checked = batch.jobs[index]
                _record(checked, outcome, report, progress, on_written, keep_images)
            _remove_leftovers([batch.jobs[index].job for index in todo])
    outputs = (path for checked in batch.jobs for path in checked.job.outputs)
    order = {path: n for n, path in enumerate(outputs)}
    report.written.sort(key=order.__getitem__)  # job order, as runner.run, not finishing order
    report.skipped.sort(key=order.__getitem__)
    return report


def _left_to_run(batch, report, progress) -> list[int]:
    """Report the jobs whose outputs all exist, as runner.run does; the indices of the rest."""
    from .runner import report_existing

    existing, todo = set(batch.existing), []
    for index, checked in enumerate(batch.jobs):
        if any(path not in existing for path in checked.job.outputs):
            todo.append(index)
        else:
            report_existing(checked, report, progress)
    return todo


def _results(batch, todo, load_options, workers, cpus, address, run_options):
    """(index, outcome) of each job in `todo` as its worker finishes it."""
    from .ray_cluster import check_room, connect, place_workers

    ray = connect(address)
    from ray import data

    context = data.DataContext.get_current()
    context.enable_progress_bars = False  # the batch's own progress display shows it
    context.print_on_execution_start = False
    placed = place_workers(ray, load_options.get("backend", "auto"), cpus)
    pool = min(workers, len(todo))
    check_room(ray, placed, pool, "--ray-workers or --replica-cpus")
    # each worker's CPU sessions run on the cores it reserved, not on every core of its node
    load_options = {**load_options, "threads": placed.threads}
    rows = [{"index": index} for index in todo]
    indices = data.from_items(rows, override_num_blocks=len(todo))  # a job per block and retry
    results = indices.map_batches(
        BatchWorker,
        batch_size=1,
        compute=data.ActorPoolStrategy(size=pool),
        fn_constructor_kwargs={
            "load_options": load_options,
            "jobs": batch.jobs,
            "existing": batch.existing,
            "run_options": run_options,
        },
        # a killed worker loses nothing: the actor comes back and its job runs again
        max_restarts=-1,
        max_task_retries=-1,
        **placed.resources,
    )
    try:
        for row in results.iter_rows():
            yield int(row["index"]), json.loads(row["result"])
    except Exception as exc:
        cause = _domain_error(exc)
        if cause is None:
            raise
        raise cause from None


def _remove_leftovers(jobs: list) -> None:
    """Delete the temporaries of workers killed mid-write: their jobs ran again, whole."""
    from ..atomic import leftover_temporaries

    for job in jobs:
        for path in job.outputs:
            for temporary in leftover_temporaries(path):
                temporary.unlink(missing_ok=True)


def _domain_error(exc: BaseException) -> FastImgError | None:
    """The fastimg error a worker raised, found inside what Ray wrapped it in, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FastImgError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def _record(checked, outcome: dict, report, progress, on_written, keep_images) -> None:
    """Add one job's outcome to `report` and `progress`, as runner.run reports it."""
    job = checked.job
    written = [Path(path) for path in outcome["written"]]
    if written:
        progress.start(job.source.path.name, checked.steps)
    for path in written:
        report.written.append(path)
        if keep_images:
            image = _thumbnail(path)
            if image is not None:
                report.images[path] = image
        if on_written is not None:
            on_written(path)
    report.skipped.extend(Path(path) for path in outcome["skipped"])
    for reason in outcome["failed"]:
        report.failed.append((job, reason))
        progress.fail(job.label, reason)
    if written and not outcome["failed"]:
        progress.finish(str(written[-1]))


def _thumbnail(path: Path):
    """A contact sheet's cell of the written `path`, with its labels, as runner.run keeps them;
    None when it cannot be read back (write_sheets then reads or leaves it out)."""
    from PIL import Image

    from ..media.label_reader import read_labels
    from .sheets import cell_image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        return cell_image(image, read_labels(path)["fastimg"])
    except (OSError, ValueError, FastImgError):
        return None
