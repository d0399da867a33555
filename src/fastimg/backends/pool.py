"""Sharing one loaded engine between threads: a pool of workers, each lent to one caller."""

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pool(Generic[T]):
    """Up to `size` workers (infer requests, execution contexts), made on first demand.

    A caller borrows one with `with pool.lend() as worker:` and waits while all are busy; a
    worker that could not be made frees its place for the next caller.
    """

    def __init__(self, make: Callable[[], T], size: int, release: Callable[[], None] = None):
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"a pool needs at least one worker, got {size!r}")
        self._make, self.size, self._release = make, size, release
        self._idle: list[T] = []
        self._made = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def lend(self) -> Iterator[T]:
        """A worker for the duration of the `with` block."""
        worker = self._take()
        try:
            yield worker
        finally:
            with self._changed:
                self._idle.append(worker)
                self._changed.notify()

    def busy(self) -> bool:
        """Whether a worker is lent now."""
        with self._changed:
            return len(self._idle) != self._made

    def release_if_idle(self) -> bool:
        """Run the pool's `release` (free the workers' scratch memory) if no worker is lent
        now, holding every caller off meanwhile; whether it ran."""
        with self._changed:
            if self._release is None or len(self._idle) != self._made:
                return False
            self._release()
            return True

    def _take(self) -> T:
        with self._changed:
            while not self._idle and self._made >= self.size:
                self._changed.wait()
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:
            return self._make()
        except BaseException:
            with self._changed:
                self._made -= 1
                self._changed.notify()
            raise
