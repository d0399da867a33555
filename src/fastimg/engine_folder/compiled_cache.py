"""Folders of compiled artifacts (OpenVINO blobs, ONNX Runtime TensorRT-EP engines), by key.

What a backend compiles is valid only for what it was compiled from and for: the backend and its
version, the precision, the device (CPU model and instruction sets, or GPU), the options and the
graph. All of them make up the key of the folder the artifacts are cached in, so an entry
compiled under other conditions is never loaded (OpenVINO once loaded fp32 blobs into a bf16
run and crashed). Each folder records its key in key.json; a folder whose record disagrees
(copied from elsewhere, damaged) is emptied before use.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from ..atomic import write_atomically

log = logging.getLogger("fastimg")

KEY_FILE = "key.json"
# Compiled sets kept per component (each can be gigabytes): the most recently used survive.
KEEP = 3


def cache_key(parts: dict) -> str:
    """A short digest of everything that changes what is compiled."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def keyed_folder(root: Path, label: str, parts: dict) -> Path | None:
    """`root/LABEL-KEY`, ready for a backend's compiled files; None where it cannot be written.

    Loose files directly in `root` (caches written before keys existed) are removed, and of the
    LABEL folders only the KEEP most recently used are kept.
    """
    folder = root / f"{label}-{cache_key(parts)}"
    try:
        root.mkdir(exist_ok=True)
        for loose in root.iterdir():
            if loose.is_file() or loose.is_symlink():
                loose.unlink()
        folder.mkdir(exist_ok=True)
        record = folder / KEY_FILE
        if _recorded(record) != parts:
            for stale in folder.iterdir():
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
            text = json.dumps(parts, indent=2, sort_keys=True).encode()
            write_atomically(record, lambda f: f.write(text))
        os.utime(record)  # its time is when this key was last used
        _prune(root, label, keep=folder)
    except OSError as exc:
        log.info("compiled models will not be cached (%s cannot be written: %s)", root, exc)
        return None
    return folder


def _prune(root: Path, label: str, keep: Path) -> None:
    def last_used(folder: Path) -> float:
        try:
            return (folder / KEY_FILE).stat().st_mtime
        except OSError:
            return 0.0

    siblings = [f for f in root.glob(f"{label}-*") if f.is_dir() and f != keep]
    for stale in sorted(siblings, key=last_used, reverse=True)[KEEP - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


def _recorded(record: Path) -> dict | None:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
