"""The real-time loop: a reader thread keeps only the newest input frame in a one-frame slot
(older ones are dropped and counted, never queued), the calling thread pushes each frame it
takes into the stream engine, and a writer thread writes the outputs to the sinks (at most
two waiting), each tagged with the input frame it came from (its number and time).

The stream ends cleanly, its sinks finished, at the source's end, at Ctrl-C, when the source
sends nothing for `stall_timeout` seconds, when the source fails, or when an output is closed
(a player reading stdout quits); each is reported in one line.

    report = run_stream(open_source("clip.mp4"), engine, [FolderSink(Path("out"))])
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FastImgError
from .sources import BrokenFrame, InputFrame

log = logging.getLogger("fastimg")

FAILURES_IN_A_ROW = 3  # frames the engine refuses in a row before the stream gives up
WRITES_WAITING = 2  # outputs queued for the sinks before the loop waits for them
# The loop waits in slices this long: a signal that lands on another thread (ONNX Runtime's,
# the reader's) does not wake a lock wait, so Ctrl-C is seen only when the wait ends.
WAKE_EVERY = 0.1
STALLED = object()


@dataclass(frozen=True)
class FrameTag:
    """Which input frame an output came from: its number (from 1) and time (seconds)."""

    index: int
    time: float


class SinkClosed(FastImgError):
    """An output's reader went away (a player quit): the stream ends, not as a failure."""


@dataclass
class StreamReport:
    """What a stream did: frames read from the source, transformed (pushed into the engine),
    dropped (the engine was busy), broken (could not be decoded), refused by the engine,
    outputs written (`reused`: of them, the similarity filter's), and how it ended (`error`:
    why, where it did not end well)."""

    read: int = 0
    transformed: int = 0
    dropped: int = 0
    broken: int = 0
    failed: int = 0
    written: int = 0
    reused: int = 0
    ended: str = "end of source"
    error: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """The report in one line."""
        return (
            f"{self.read} frames read, {self.transformed} transformed, {self.dropped} dropped "
            f"(the engine was busy), {self.broken} broken, {self.failed} refused; "
            f"{self.written} outputs ({self.reused} reused) in {self.seconds:.1f} s, "
            f"{self.written / max(self.seconds, 1e-9):.1f}/s; ended: {self.ended}"
        )


@dataclass(frozen=True)
class _End:
    reason: str
    error: str | None = None


class FrameSlot:
    """The newest input frame, waiting for the engine: a new one replaces (drops) the one
    waiting, or with `wait` waits until it is taken. Nothing else is ever held."""

    def __init__(self, wait: bool = False, clock: Callable[[], float] = time.monotonic):
        self.wait, self.clock = wait, clock
        self.item = None
        self.end: _End | None = None
        self.dropped = 0
        self.stopped = False
        self.arrived = clock()
        self.changed = threading.Condition()

    def put(self, frame: InputFrame) -> None:
        """Offer a frame (the reader's side)."""
        with self.changed:
            while self.wait and self.item is not None and not self.stopped:
                self.changed.wait()
            if self.stopped:
                return
            self.dropped += self.item is not None
            self.item, self.arrived = frame, self.clock()
            self.changed.notify_all()

    def finish(self, reason: str, error: str | None = None) -> None:
        """The source has no more frames (the reader's side)."""
        with self.changed:
            self.end, self.arrived = _End(reason, error), self.clock()
            self.changed.notify_all()

    def get(self, stall_timeout: float):
        """The frame waiting, or the source's end, or STALLED when nothing has come for
        `stall_timeout` seconds (the engine's side)."""
        with self.changed:
            while self.item is None and self.end is None:
                left = self.arrived + stall_timeout - self.clock()
                if left <= 0:
                    return STALLED
                self.changed.wait(min(left, WAKE_EVERY))
            item, self.item = self.item, None
            self.changed.notify_all()
            return item if item is not None else self.end

    def stop(self) -> None:
        """The engine's side is gone: the reader stops at its next frame."""
        with self.changed:
            self.stopped = True
            self.changed.notify_all()


def run_stream(
    source,
    engine,
    sinks: list,
    *,
    stall_timeout: float = 10.0,
    every_frame: bool = False,
    max_frames: int | None = None,
    report: Callable[[str], None] = log.warning,
    status: Callable[[str], None] | None = None,
    status_every: float = 10.0,
) -> StreamReport:
    """Stream `source`'s frames through `engine` into `sinks` until the stream ends; return
    what happened. `report` gets one line per frame broken or refused; how the stream ended
    is the report's (`ended`, and `error` where it did not end well).

    A file or folder source is played at its frame rate, its frames dropped while the engine is
    busy as a camera's are; with `every_frame` the reader waits for the engine instead, so no
    frame is dropped. `max_frames` ends the stream after that many frames read. `status` gets
    a line on the stream's rate every `status_every` seconds.
    """
    started = time.monotonic()
    result = StreamReport()
    slot = FrameSlot(wait=every_frame)
    pace = not (source.live or every_frame)
    reader = threading.Thread(
        target=_read, args=(source, slot, pace, max_frames, result, report), daemon=True,
        name="fastimg-stream-reader",
    )  # fmt: skip
    reader.start()
    writer = _Writer(sinks, result)
    try:
        try:
            ticker = _Ticker(status, status_every, slot, result)
            if _loop(slot, engine, writer, stall_timeout, result, report, ticker):
                for out in engine.flush():
                    writer.put(out)
        finally:
            writer.finish()  # the outputs already made are written, whatever ended the stream
    except KeyboardInterrupt:
        result.ended = "interrupted (Ctrl-C)"
    except SinkClosed as exc:
        result.ended = str(exc)
    except FastImgError as exc:
        result.ended, result.error = "error", str(exc)
    finally:
        slot.stop()
        result.dropped = slot.dropped
        _close(sinks, result)
        result.seconds = time.monotonic() - started
    return result


def _loop(slot, engine, writer, stall_timeout, result: StreamReport, report, ticker) -> bool:
    """Take frames until the source ends, stalls or fails (True: the engine's frames in flight
    are finished) or the engine refuses too many (False)."""
    refused = 0
    while True:
        item = slot.get(stall_timeout)
        if item is STALLED:
            result.ended = "stalled"
            result.error = (
                f"the source sent no frame for {stall_timeout:g} s (a camera unplugged or "
                "frozen, a pipe that stopped writing?): stopped"
            )
            return True
        if isinstance(item, _End):
            result.ended, result.error = item.reason, item.error
            return True
        tag = FrameTag(item.index, item.time)
        try:
            out = engine.push(item.image, tag)
        except FastImgError as exc:
            result.failed, refused = result.failed + 1, refused + 1
            report(f"frame {item.index}: {exc}: skipped")
            if refused >= FAILURES_IN_A_ROW:
                result.ended = "error"
                result.error = f"{refused} frames in a row were refused, the last: {exc}"
                return False
            continue
        refused, result.transformed = 0, result.transformed + 1
        ticker.tick()
        if out is not None:
            writer.put(out)


def _read(source, slot: FrameSlot, pace: bool, max_frames, result: StreamReport, report) -> None:
    """The reader thread: the source's frames into the slot, at their times where `pace`."""
    frames = source.frames()
    origin = None
    try:
        for item in frames:
            if slot.stopped:
                return
            if isinstance(item, BrokenFrame):
                result.broken += 1
                report(f"frame {item.index} of {source.name} is broken ({item.reason}): skipped")
                continue
            if pace:
                origin = time.monotonic() - item.time if origin is None else origin
                delay = origin + item.time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            result.read += 1
            slot.put(item)
            if max_frames is not None and result.read >= max_frames:
                slot.finish(f"{max_frames} frames read (--max-frames)")
                return
        slot.finish("end of source")
    except FastImgError as exc:
        slot.finish("error", f"{source.name}: {exc}")
    except Exception as exc:  # the thread's end must reach the loop, which would stall else
        slot.finish("error", f"{source.name} failed: {type(exc).__name__}: {exc}")
    finally:
        frames.close()


class _Ticker:
    """A line on the stream's rate, every `every` seconds: frames transformed, and dropped."""

    def __init__(self, status, every: float, slot: FrameSlot, result: StreamReport):
        self.status, self.every, self.slot, self.result = status, every, slot, result
        self.since, self.transformed = time.monotonic(), 0

    def tick(self) -> None:
        """Say the rate where it is time to."""
        now = time.monotonic()
        if self.status is None or now - self.since < self.every:
            return
        rate = (self.result.transformed - self.transformed) / max(now - self.since, 1e-9)
        self.status(
            f"{self.result.transformed} frames transformed, {rate:.1f}/s lately; "
            f"{self.slot.dropped} dropped"
        )
        self.since, self.transformed = now, self.result.transformed


class _Writer:
    """The sinks, written from a thread of their own behind a queue of at most WRITES_WAITING
    outputs (the loop waits while it is full), so that encoding overlaps the engine's work.
    A sink's failure is raised in the loop at its next output, and by `finish`."""

    def __init__(self, sinks: list, result: StreamReport):
        self.sinks, self.result = sinks, result
        self.waiting = queue.Queue(maxsize=WRITES_WAITING)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="fastimg-stream-writer")
        self.thread.start()

    def put(self, out) -> None:
        """Queue one engine output for every sink."""
        self._raise()
        self._offer(out)

    def finish(self) -> None:
        """Write what is queued, stop the thread; raise a sink's failure."""
        self._offer(None)  # (the writer drains the queue, even after a failure)
        while self.thread.is_alive():
            self.thread.join(WAKE_EVERY)
        self._raise()

    def _offer(self, item) -> None:
        while True:
            try:
                self.waiting.put(item, timeout=WAKE_EVERY)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def _run(self) -> None:
        failed = False
        while (out := self.waiting.get()) is not None:
            if failed:
                continue  # (the queue is drained so that the loop never waits on it)
            try:
                for sink in self.sinks:
                    sink.write(out.image, out.tag, out.skipped)
            except Exception as exc:  # raised again in the loop's thread
                self.failure, failed = exc, True
                continue
            self.result.written += 1
            self.result.reused += bool(out.skipped)


def _close(sinks: list, result: StreamReport) -> None:
    """Finish every sink (a video is completed), even where one fails; the first failure is
    the stream's error."""
    for sink in sinks:
        try:
            sink.close()
        except FastImgError as exc:
            if result.error is None:
                result.ended, result.error = "error", str(exc)
