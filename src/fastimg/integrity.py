"""File hashes of engine folders, checked against the manifest before anything is loaded.

Hashing gigabytes on every start would cost seconds, so a file whose size, modification time
and inode match a previous successful check is trusted; `full=True` re-hashes everything.
"""

import hashlib
import json
import os
from pathlib import Path

from .atomic import write_atomically
from .errors import EngineError

STAMPS = "verified-files.json"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """fastimg's per-user cache folder ($FASTIMG_CACHE_DIR, else $XDG_CACHE_HOME/fastimg)."""
    if os.environ.get("FASTIMG_CACHE_DIR"):
        return Path(os.environ["FASTIMG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastimg"


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _load_stamps() -> dict:
    try:
        data = json.loads((cache_dir() / STAMPS).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_stamps(stamps: dict) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / STAMPS, lambda f: f.write(json.dumps(stamps).encode()))
    except OSError:
        pass  # an unwritable cache only means hashing again next time


def verify_hashes(folder: Path, files: dict[str, dict], fix: str, full: bool = False) -> int:
    """Check each file's SHA-256 against `files` (manifest entries); return how many were hashed."""
    stamps = _load_stamps()
    hashed = 0
    for rel, info in files.items():
        expected = info.get("sha256")
        if expected is None:
            continue
        path = folder / rel
        key = str(path.resolve())
        stamp = {"signature": _signature(path), "sha256": expected}
        if not full and stamps.get(key) == stamp:
            continue
        hashed += 1
        if sha256(path) != expected:
            stamps.pop(key, None)
            _save_stamps(stamps)
            raise EngineError(
                f"engine file {path} does not match the SHA-256 in its manifest: it is damaged "
                f"or was changed after export; {fix}"
            )
        stamps[key] = stamp
    if hashed:
        _save_stamps(stamps)
    return hashed
