"""Writing an engine folder safely: one writer at a time, and readers never see it missing.

A writer holds an exclusive lock on a file beside the folder (`.NAME.lock`, removed when it is
done) for as long as it writes; a second writer is refused at once with a message saying so.
A finished folder replaces the old one in a single atomic exchange where the system offers it
(Linux renameat2 with RENAME_EXCHANGE), so a reader opening the folder sees the old engine or
the new one, never neither; elsewhere the old folder is set aside and the new one renamed in,
a gap of two renames.
"""

import contextlib
import ctypes
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fastimg.errors import InputError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[Path]:
    """Hold the lock on writing `out`; an InputError if another process holds it.

    The lock file is removed on release (while still locked); a writer that locked a file
    removed meanwhile sees that its inode is gone from the path and tries again.
    """
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    for _ in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                f"another fastimg process is writing {out} (it holds {lock}): wait for it to "
                "finish, or write to another folder"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was removed by a writer that just finished: lock the new one
    else:
        raise InputError(f"could not take the lock {lock}: other writers keep replacing it")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # closing releases the lock


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where this system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(staging: Path, out: Path) -> None:
    """Put `staging` in place of `out` (which may not exist) and remove what `out` held."""
    if out.exists() and exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old folder
        return
    backup = None
    if out.exists():
        backup = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, backup)
    try:
        os.rename(staging, out)
    except OSError:
        if backup is not None:
            os.rename(backup, out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
