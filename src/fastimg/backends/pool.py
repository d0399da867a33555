"""Sharing one loaded engine between threads: a pool of workers, each lent to one caller."""

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Pool(Generic[T]):
    """Up to `size` workers (infer requests, execution contexts), made on first demand.

    A caller borrows one with `with pool.lend() as worker:` and waits while all are busy.
    """

    def __init__(self, make: Callable[[], T], size: int):
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"a pool needs at least one worker, got {size!r}")
        self._make, self.size = make, size
        self._idle: queue.LifoQueue[T] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self) -> Iterator[T]:
        """A worker for the duration of the `with` block."""
        worker = self._take()
        try:
            yield worker
        finally:
            self._idle.put(worker)

    def _take(self) -> T:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._made < self.size
            if grow:
                self._made += 1
        if not grow:
            return self._idle.get()
        try:
            return self._make()
        except BaseException:
            with self._lock:
                self._made -= 1
            raise
