"""Files written whole or not at all: a temporary file beside the target, then a rename.

Temporary files and folders are created private (mode 0600/0700); what they become is given
the mode any other tool's output would have under the user's umask.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux 4.7+)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic across threads)
    os.umask(mask)
    return mask


def public_mode(path: Path, like: Path | None = None) -> None:
    """Give `path` the mode of `like` if it exists, else what open() or mkdir() would give."""
    try:
        path.chmod(like.stat().st_mode & 0o7777)
        return
    except (AttributeError, OSError):
        pass
    base = 0o777 if path.is_dir() else 0o666
    path.chmod(base & ~current_umask())


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write(file)`; a failure leaves the old file and no temporary.

    A replaced file keeps its mode; a new one gets the umask's.
    """
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        public_mode(Path(tmp), like=path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def leftover_temporaries(path: Path) -> list[Path]:
    """Temporaries of `path` that a writer killed mid-write (SIGKILL, a lost machine) left."""
    prefix = _temporary_prefix(path)
    try:
        return [p for p in path.parent.iterdir() if p.name.startswith(prefix)
                and p.name.endswith(".tmp")]  # fmt: skip
    except OSError:
        return []


def make_staging_folder(parent: Path, prefix: str) -> Path:
    """A new hidden folder in `parent` to assemble output in, with the umask's mode."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    public_mode(folder)
    return folder
