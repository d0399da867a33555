"""Progress of a whole batch (images, each with denoising steps, or video frames) on one display.

Three displays: "bar", one line redrawn in place for a terminal; "lines", one line per finished,
skipped or failed image for job runners' logs; "quiet". A callback sees every event whatever the
display. The ETA is the average time per finished step, over the images timed so far, times the
steps left; skipped and failed images are left out of the timing.
"""

import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

MODES = ("auto", "bar", "lines", "quiet")
REDRAW_INTERVAL = 0.1  # s between bar redraws on step events
BAR_WIDTH = 20
DEFAULT_COLUMNS = 80


@dataclass(frozen=True)
class Progress:
    """One snapshot of a batch, as passed to the callback."""

    done: int
    total: int
    failed: int
    step: int
    steps: int
    current: str
    elapsed: float
    eta: float | None
    rate: float | None
    last: str | None


class BatchProgress:
    """Counts a batch's images and steps, and shows them on `stream` and to `callback`."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        mode: str = "auto",
        callback: Callable[[Progress], None] | None = None,
        unit: str = "image",
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0:
            raise ValueError(f"total must be 0 or more, got {total}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.mode = ("bar" if _isatty(self.stream) else "lines") if mode == "auto" else mode
        self.callback = callback
        self.unit = unit
        self.clock = clock
        self._lock = threading.RLock()
        self._t0 = clock()
        self._done = 0
        self._failed = 0
        self._current = ""
        self._step = 0
        self._steps = 0
        self._started: float | None = None  # clock at start() of the image in work
        self._timed_images = 0
        self._timed_steps = 0
        self._timed_seconds = 0.0
        self._last: str | None = None
        self._drawn = 0  # length of the bar line on screen; 0 when none is
        self._drawn_at: float | None = None
        self._pending = False
        self._closed = False

    def start(self, label: str, steps: int) -> None:
        """Begin the image `label`, which takes `steps` denoising steps."""
        with self._lock:
            self._current, self._step, self._steps = label, 0, steps
            self._started = self.clock()
            self._event(redraw=True)

    def step(self, i: int | None = None) -> None:
        """Mark step `i` (1-based; the next one when None) of the current image done."""
        with self._lock:
            self._step = self._step + 1 if i is None else i
            self._event(redraw=False)

    def finish(self, output: str) -> None:
        """The current image is done and written to `output`."""
        with self._lock:
            now = self.clock()
            seconds = None
            if self._started is not None:
                seconds = now - self._started
                self._timed_images += 1
                self._timed_steps += max(self._steps, 1)
                self._timed_seconds += seconds
            self._done += 1
            self._last = output
            self._idle()
            self._event(redraw=True, line=self._finished_line(output, seconds))

    def fail(self, label: str, reason: str) -> None:
        """The image `label` failed with `reason`; the batch goes on."""
        with self._lock:
            self._failed += 1
            self._last = f"{label}: {reason}"
            self._idle()
            if self.mode == "bar":
                self._event(redraw=True, message=f"error: {_one_line(label)}: {reason.rstrip()}")
            else:  # "error: " first, as every error fastimg prints, for logs grepped for it
                line = f"error: {_one_line(label)}: {_one_line(reason)}  {self._count()}"
                self._event(redraw=True, line=line + self._times())

    def skip(self, output: str, reason: str = "skipped (exists)") -> None:
        """`output` needs no work (it exists, or a frame is reused): done, not timed."""
        with self._lock:
            self._done += 1
            self._last = output
            self._idle()
            self._event(redraw=False, line=f"{self._count()} {_one_line(output)}  {reason}")

    def aside(self, write: Callable[[], None]) -> None:
        """Run `write` (its own output, such as a path on stdout) without garbling the bar.

        The bar is cleared first and drawn again after.
        """
        with self._lock:
            if self.mode != "bar" or self._closed or not self._drawn:
                write()
                return
            self._clear()
            write()
            self._draw(self.snapshot())

    def snapshot(self) -> Progress:
        """The batch's state now."""
        with self._lock:
            now = self.clock()
            return Progress(
                done=self._done,
                total=self.total,
                failed=self._failed,
                step=self._step,
                steps=self._steps,
                current=self._current,
                elapsed=now - self._t0,
                eta=self._eta(now),
                rate=self._timed_images / self._timed_seconds if self._timed_seconds > 0 else None,
                last=self._last,
            )

    def close(self) -> None:
        """End the bar's line; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            if self.mode == "bar" and self._pending:
                self._draw(self.snapshot())
            if self._drawn:
                self._write("\n")
            self._closed = True

    def __enter__(self) -> "BatchProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _idle(self) -> None:
        self._current, self._step, self._steps, self._started = "", 0, 0, None

    def _eta(self, now: float) -> float | None:
        if self._timed_steps == 0:
            return None
        per_step = self._timed_seconds / self._timed_steps
        steps_per_image = self._timed_steps / self._timed_images
        left = self.total - self._done - self._failed
        steps_left = left * steps_per_image
        if self._started is not None:
            # The image in work counts by its own steps, less those already done.
            steps_left += max(self._steps, 1) - self._step - steps_per_image
        return max(0.0, steps_left * per_step)

    def _event(self, redraw: bool, line: str | None = None, message: str | None = None) -> None:
        progress = self.snapshot()
        if not self._closed:
            if self.mode == "lines" and line is not None:
                self._write(line + "\n")
            elif self.mode == "bar":
                if message is not None:
                    self._clear()
                    self._write(message + "\n")
                now = self.clock()
                due = self._drawn_at is None or now - self._drawn_at >= REDRAW_INTERVAL
                if redraw or due:
                    self._draw(progress)
                else:
                    self._pending = True
        if self.callback is not None:
            self.callback(progress)

    def _draw(self, p: Progress) -> None:
        width = _columns(self.stream) - 1  # a line as wide as the terminal wraps on some
        filled = BAR_WIDTH * (p.done + p.failed) // p.total if p.total else BAR_WIDTH
        parts = [
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {p.done}/{p.total} {self.unit}s",
        ]
        if p.failed:
            parts.append(f"{p.failed} failed")
        if p.steps:
            parts.append(f"step {p.step}/{p.steps}")
        parts.append(_clock_time(p.elapsed))
        if p.eta is not None:
            parts.append(f"ETA {_clock_time(p.eta)}")
        if self.unit == "frame" and p.rate is not None:
            parts.append(f"{p.rate:.2f} frames/s")
        line = "  ".join(parts)
        if p.current:
            line += "  " + _one_line(p.current)
        line, columns = _cut(line, width)
        self._write("\r" + line + " " * (self._drawn - columns))
        self._drawn = columns
        self._drawn_at = self.clock()
        self._pending = False

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _count(self) -> str:
        return f"[{self._done + self._failed}/{self.total}]"

    def _finished_line(self, output: str, seconds: float | None) -> str:
        line = f"{self._count()} {_one_line(output)}"
        if seconds is not None:
            line += f"  {seconds:.1f} s"
        return line + self._times()

    def _times(self) -> str:
        p = self.snapshot()
        text = f"  elapsed {_clock_time(p.elapsed)}"
        if p.eta is not None:
            text += f"  ETA {_clock_time(p.eta)}"
        if self.unit == "frame" and p.rate is not None:
            text += f"  {p.rate:.2f} frames/s"
        return text

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _clock_time(seconds: float) -> str:
    """`seconds` as M:SS, or H:MM:SS from an hour on."""
    s = max(0, int(seconds + 0.5))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _one_line(text: str) -> str:
    """`text` with line breaks and other control characters turned into spaces, trimmed."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _cut(text: str, width: int) -> tuple[str, int]:
    """The longest start of `text` that fills at most `width` terminal columns, and its width."""
    used = 0
    for i, ch in enumerate(text):
        w = 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        if used + w > width:
            return text[:i], used
        used += w
    return text, used


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (AttributeError, ValueError, OSError):
        return DEFAULT_COLUMNS
