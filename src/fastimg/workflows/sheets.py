"""Contact sheets: one labelled grid per input of the images its jobs make (`--grid`), the
first swept setting across and the others down; failed images are grey cells.

    sheets = plan_sheets(outputs, Path("out"))   # before any work
    report = runner.run(pipe, batch, keep_images=True)
    write_sheets(sheets, report)
"""

import logging
from pathlib import Path

from ..errors import FastImgError, InputError
from .jobs import SWEPT, Job, shown, varying
from .naming import Outputs

log = logging.getLogger("fastimg")

MAX_SHEET_SIDE = 64  # rows or columns (grid.MAX_ROWS, grid.MAX_COLUMNS)
SHEET_CELL = 256  # the longer side of a contact sheet's cells
SHEET_LABELS = {"strength": "strength", "guidance": "guidance", "steps": "steps", "seed": "seed",
                "index": "image"}  # fmt: skip


def plan_sheets(outputs: Outputs, folder: Path) -> dict[Path, list[Job]]:
    """One contact sheet per input, FOLDER/SUBFOLDER/STEM-grid.png, of its jobs' images."""
    sheets: dict[Path, list[Job]] = {}
    for job in outputs.jobs:
        sheet = folder / job.source.subfolder / f"{job.source.path.stem}-grid.png"
        jobs = sheets.setdefault(sheet, [])
        if jobs and jobs[0].source.path != job.source.path:
            raise InputError(
                f"{jobs[0].source.path} and {job.source.path} would share the contact sheet "
                f"{sheet}: give inputs of one name in separate runs, or leave out --grid"
            )
        jobs.append(job)
    made_by = {path.resolve(): job for job in outputs.jobs for path in job.outputs}
    for sheet, jobs in sheets.items():
        rows, columns, _ = sheet_layout(jobs)
        if max(len(rows), len(columns)) > MAX_SHEET_SIDE:
            raise InputError(
                f"the contact sheet {sheet} would have {len(rows)} rows and {len(columns)} "
                f"columns, more than {MAX_SHEET_SIDE}: sweep fewer values, or leave out --grid"
            )
    for sheet in sheets:
        if sheet.resolve() in made_by:
            raise InputError(
                f"the contact sheet {sheet} would replace the output of "
                f"{made_by[sheet.resolve()].label}: choose another --name"
            )
    return sheets


def check_sheets(sheets: dict[Path, list[Job]], overwrite: bool, skip_existing: bool) -> None:
    """Refuse to replace a contact sheet of an earlier run unless told to.

    --skip-existing rewrites it with the kept and the new images.
    """
    existing = [sheet for sheet in sheets if sheet.exists()]
    if existing and not (overwrite or skip_existing):
        raise InputError(
            f"{existing[0]} already exists: pass --overwrite to replace it (or --skip-existing "
            "to make the missing images and redraw the sheet)"
        )


def sheet_layout(jobs: list[Job]) -> tuple[list[str], list[str], dict[Path, tuple[str, str]]]:
    """Rows, columns and each output's (row, column): first swept setting across, others down."""
    keys = list(varying(jobs)) + (["index"] if any(job.image_count > 1 for job in jobs) else [])
    rows: list[str] = []
    columns: list[str] = []
    places: dict[Path, tuple[str, str]] = {}
    for job in jobs:
        for index, path in enumerate(job.outputs):
            values = {**{key: job.value_by_key(key) for key in SWEPT}, "index": index}
            labels = [f"{SHEET_LABELS[key]} {shown(values[key])}" for key in keys]
            column, row = (labels[0] if labels else ""), " · ".join(labels[1:])
            columns += [column] if column not in columns else []
            rows += [row] if row not in rows else []
            places[path] = (row, column)
    return rows, columns, places


def write_sheets(
    sheets: dict[Path, list[Job]], report, metadata: bool = True, signer=None
) -> list[Path]:
    """Draw and write each contact sheet from the images made and kept; the sheets written.

    Failed images are grey cells.
    """
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


def cell_image(image, labels: dict):
    """A contact sheet's cell of `image` (SHEET_CELL pixels on its longer side), with `labels`."""
    cell = image.copy()
    cell.thumbnail((SHEET_CELL, SHEET_CELL))
    cell.info = dict(labels)
    return cell
