"""How much memory an export holds: its own (anonymous) memory apart from weight files it maps.

The resident set counts the pages of every file a process maps, so an export that reads a
10 GB ONNX weight file through mmap reports more "memory" than the machine has; those pages
are the page cache's and are reclaimed under pressure. What the process holds itself is its
anonymous memory (Linux's RssAnon), which has no recorded peak: it is sampled in a thread.
"""

import re
import resource
import sys
import threading
from pathlib import Path

STATUS = Path("/proc/self/status")


def anonymous_bytes() -> int | None:
    """The memory this process holds itself now (RssAnon), or None where /proc does not say."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    match = re.search(r"^RssAnon:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def peak_resident_bytes() -> int:
    """The largest resident set this process has had, mapped files included (Linux, macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakWatch:
    """The largest anonymous memory seen while the `with` block runs, sampled every
    `interval` seconds (a spike shorter than that can be missed); None where unknown."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak = interval, anonymous_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def _record(self) -> None:
        now = anonymous_bytes()
        if now is not None:
            self.peak = max(self.peak or 0, now)

    def __enter__(self) -> "PeakWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._record()

    def describe(self) -> str:
        """'13.2 GiB held (sampled), 32.1 GiB resident with mapped files' or the latter."""
        resident = f"{peak_resident_bytes() / 2**30:.1f} GiB resident with mapped files"
        if self.peak is None:
            return resident
        return f"{self.peak / 2**30:.1f} GiB held by the process (sampled), {resident}"
