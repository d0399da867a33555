"""Job files: a CSV (with a header row) or JSONL file whose rows are img2img jobs, read and
validated whole, so that a bad row is refused, with its number and reason, before any work.

The columns are `image`, every call setting's key (fastimg.settings: prompt, strength, steps,
guidance, seed, num_images, sampler, the SDXL ones, the ControlNet's, mask_blur, mask_padding
...), `control_image`, `mask`, `mask_invert`, `keep_unmasked` and `output`; each setting's cell
is converted and checked by the setting itself (Setting.parse, as the HTTP API's fields are).
`image`, `control_image` and `mask` are paths from the file's folder; `mask_invert` and
`keep_unmasked` are true or false; a `mask_padding` transforms only the masked region
(--inpaint-area masked).

Several ControlNets: `control_image` holds one path per ControlNet in their order, separated by
`;` (sketch.png;room-edges.png), or a JSON list in a JSONL file; `control_scale`,
`control_start`, `control_end` and `control_preprocess` likewise hold one value for all or one
per ControlNet (1.0;0.5; a preprocessor `none` takes its image as given).
"""

import csv
import io
import json
from pathlib import Path

from .. import settings
from ..errors import InputError
from ..media.images import looks_like_an_image
from .jobs import MAX_JOBS, Job
from .sources import Source

# A job's own: its input, its ControlNet's control image, its mask and its output name.
MASK_FLAGS = ("mask_invert", "keep_unmasked")
OWN_COLUMNS = ("image", "control_image", "mask", *MASK_FLAGS, "output")
MAX_BYTES = 64 * 2**20
MAX_ERRORS = 10


def read_job_file(path: Path, defaults: dict | None = None) -> list[Job]:
    """The jobs of a .csv or .jsonl file, every row checked before any is returned.

    `defaults` ({column: value}, None: no default) fill the settings' columns a row leaves empty;
    image paths are relative to the file's folder.
    """
    rows = _rows(path)
    if not rows:
        raise InputError(f"job file {path} has no jobs")
    if len(rows) > MAX_JOBS:
        raise InputError(f"job file {path} has {len(rows)} jobs, more than {MAX_JOBS}: split it")
    defaults = defaults or {}
    jobs, errors = [], []
    for number, (line, row) in enumerate(rows, start=1):
        try:
            jobs.append(_job(row, number, path.parent, defaults))
        except InputError as exc:
            errors.append(f"row {number} (line {line}): {exc}")
    if errors:
        more = f"\n  ... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        listed = "\n  ".join(errors[:MAX_ERRORS])
        raise InputError(
            f"job file {path} has {len(errors)} bad row(s); nothing was run:\n  {listed}{more}"
        )
    return jobs


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, {column: value}) of each job row."""
    if not path.is_file():
        raise InputError(f"job file {path} does not exist or is not a file")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"job file {path} is over {MAX_BYTES // 2**20} MB: split it")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"job file {path} is not UTF-8 text ({exc}): save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, text)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path, text)
    raise InputError(f"job file {path} must be a .csv (with a header row) or a .jsonl file")


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, {column: value}) of each non-blank CSV row."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        _check_columns(path, header)
        rows = []
        for values in reader:
            if not any(value.strip() for value in values):
                continue  # blank lines
            if len(values) > len(header):
                raise InputError(
                    f"job file {path} line {reader.line_num}: {len(values)} values for "
                    f"{len(header)} columns (quote values that contain commas)"
                )
            rows.append((reader.line_num, dict(zip(header, values, strict=False))))
    except csv.Error as exc:
        raise InputError(
            f"job file {path} line {reader.line_num} is not valid CSV: {exc}"
        ) from None
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, {column: value}) of each non-blank JSON line."""
    rows = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            row = json.loads(content)
        except ValueError as exc:
            raise InputError(f"job file {path} line {line} is not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise InputError(f"job file {path} line {line} is not a JSON object ({{...}})")
        _check_columns(path, list(row), line)
        rows.append((line, row))
    return rows


def columns() -> tuple[str, ...]:
    """A job file's columns: image, every call setting's key (settings.SETTINGS),
    control_image, mask, mask_invert, keep_unmasked, output."""
    keys = (setting.key for setting in settings.SETTINGS)
    return ("image", *keys, "control_image", "mask", *MASK_FLAGS, "output")


def _check_columns(path: Path, names: list[str], line: int | None = None) -> None:
    """Refuse columns that are not a job file's, and a CSV header without `image`."""
    known = columns()
    unknown = [name for name in names if name not in known]
    where = f" line {line}" if line else ""
    if unknown:
        raise InputError(
            f"job file {path}{where} has unknown column(s) {', '.join(map(repr, unknown))}: "
            f"the columns are {', '.join(known)}"
        )
    if line is None and "image" not in names:
        raise InputError(f"job file {path} has no 'image' column: the columns are "
                         f"{', '.join(known)}")  # fmt: skip


def _job(row: dict, number: int, folder: Path, defaults: dict) -> Job:
    """Row `number` as a job, its settings' cells parsed by each setting; the first problem
    found is raised."""
    values = {key: value for key, value in row.items() if not _empty(value)}
    values = {**{k: v for k, v in defaults.items() if v is not None}, **values}
    if "image" not in values:
        raise InputError("no image")
    image = _image(values["image"], "image", folder)
    if "prompt" not in values:
        raise InputError("no prompt (give the row one, or pass --prompt for rows without)")
    name = values.get("output")
    if name is not None:
        name = _text(name, "output")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"output {name!r} must be a name inside -o, not a path out of it")
    cells = {key: value for key, value in values.items() if key not in OWN_COLUMNS}
    call = settings.from_fields(cells)
    if "control_image" in values:
        call = call.with_values(control_image=_control_images(values["control_image"], folder))
    if "mask" in values:
        call = call.with_values(mask_image=str(_image(values["mask"], "mask", folder)))
    flags = {name: settings.parse_flag(values[name], name) for name in MASK_FLAGS if name in values}
    return Job(Source(image), call.with_values(**flags), row=number, name=name)


def _image(value, column: str, folder: Path) -> Path:
    """An image cell's file (relative to the job file's `folder`), refused unless it is one."""
    image = Path(_text(value, column).strip())
    image = image if image.is_absolute() else folder / image
    if not image.is_file():
        what = {"image": "image", "mask": "mask (white repaints, black keeps)"}.get(
            column, f"{column} (the ControlNet's image)"
        )
        raise InputError(f"{what} {image} does not exist or is not a file")
    if not looks_like_an_image(image):
        raise InputError(f"{image} is not an image (PNG, JPEG, WebP, GIF, BMP or TIFF)")
    return image


def _control_images(value, folder: Path) -> str | tuple[str, ...]:
    """A control_image cell's files: one path, or one per ControlNet (`a.png;b.png`, or a JSON
    list), each checked as an image cell is."""
    paths = (
        value
        if isinstance(value, list)
        else _text(value, "control_image").split(settings.LIST_SEPARATOR)
    )
    if not paths or any(_empty(p) for p in paths):
        raise InputError(
            f"control_image {value!r} must be a path, or one path per ControlNet separated by "
            f"{settings.LIST_SEPARATOR!r}, with none empty"
        )
    images = tuple(str(_image(path, "control_image", folder)) for path in paths)
    return images[0] if len(images) == 1 else images


def _empty(value) -> bool:
    """Whether a cell is empty (missing, or only whitespace): its default fills it."""
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value, column: str) -> str:
    """A job's own text cell (image, output), refused when it is not text."""
    if not isinstance(value, str):
        raise InputError(f"{column} must be text, got {value!r}")
    return value
