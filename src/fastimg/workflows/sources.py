"""Input images from files and folders: a folder's image files are found by their content,
and each input keeps the subfolder it came from, so outputs mirror the input tree."""

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..media.images import looks_like_an_image

log = logging.getLogger("fastimg")


@dataclass(frozen=True)
class Source:
    """An input image and the subfolder (relative to its folder argument) its outputs go to."""

    path: Path
    subfolder: Path = Path()


def collect_sources(
    paths: list[Path], recursive: bool = False, exclude: Path | None = None
) -> list[Source]:
    """The input images named by `paths`: files as given, folders' image files in name order.

    A folder's files that are not images (by their first bytes, not their suffix) are skipped
    with a note; `recursive` also walks subfolders (hidden ones, and `exclude` -- the output
    folder, when it lies inside an input folder -- are skipped).
    """
    sources: list[Source] = []
    skip = exclude.resolve() if exclude is not None else None
    for path in paths:
        if path.is_dir():
            found = _folder_images(path, recursive, skip)
            if not found:
                where = "or its subfolders " if recursive else ""
                hint = "" if recursive else " (pass --recursive to look in subfolders)"
                raise InputError(f"folder {path} {where}holds no image files{hint}")
            sources.extend(found)
        elif path.exists() and not path.is_file():
            raise InputError(f"{path} is neither an image file nor a folder")
        else:  # a missing file is reported when it is loaded, with the batch going on
            sources.append(Source(path))
    return sources


def _folder_images(folder: Path, recursive: bool, skip: Path | None) -> list[Source]:
    found, skipped = [], []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(candidates):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if looks_like_an_image(path):
            found.append(Source(path, relative.parent))
        else:
            skipped.append(relative)
    if skipped:
        names = ", ".join(str(p) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.info("skipped %d file(s) in %s that are not images: %s%s", len(skipped), folder,
                 names, more)  # fmt: skip
    return found
