"""The real-time loop on fake sources, engines and sinks: outputs tagged with their input
frames through an engine that lags (the stream batch) or reuses outputs, frames dropped (never
queued) while the engine is busy, and every way a stream ends: the source's end, a stall,
Ctrl-C, a failing source, refused frames, a closed output."""

import signal
import threading
from dataclasses import dataclass

import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.stream.driver import STALLED, FrameSlot, FrameTag, SinkClosed, run_stream
from fastimg.stream.sources import BrokenFrame, InputFrame


def frame(index: int) -> InputFrame:
    """Input frame `index`, its pixels its number."""
    return InputFrame(index, Image.new("RGB", (8, 8), (index, 0, 0)), (index - 1) / 10)


class FakeSource:
    """A live source giving `items` (frames, broken frames, or callables run in between)."""

    live, name, rate = True, "fake", None

    def __init__(self, items):
        self.items, self.closed = items, False

    def frames(self):
        try:
            for item in self.items:
                if callable(item):
                    item()
                else:
                    yield item
        finally:
            self.closed = True


@dataclass(frozen=True)
class Out:
    image: object
    tag: object
    skipped: bool


class LaggingEngine:
    """The stream batch's shape: push returns the output of the frame `lag` pushes earlier."""

    def __init__(self, lag: int = 0):
        self.lag, self.waiting, self.pushed, self.flushed = lag, [], [], False

    def push(self, image, tag):
        self.pushed.append(tag.index)
        self.waiting.append(Out(image, tag, False))
        return self.waiting.pop(0) if len(self.waiting) > self.lag else None

    def flush(self):
        self.flushed = True
        done, self.waiting = self.waiting, []
        return done


class SkippingEngine(LaggingEngine):
    """Reuses the last output for every even frame (a similarity filter's shape)."""

    def push(self, image, tag):
        self.pushed.append(tag.index)
        if tag.index % 2 == 0:
            return Out(self.last.image, tag, True)
        self.last = Out(image, tag, False)
        return self.last


class Sink:
    def __init__(self):
        self.written, self.closed = [], False

    def write(self, image, tag, skipped):
        self.written.append((tag, skipped, image.getpixel((0, 0))[0]))

    def close(self):
        self.closed = True


def stream(items, engine=None, **options):
    engine = engine or LaggingEngine()
    sink, lines = Sink(), []
    options = {"every_frame": True, **options}
    report = run_stream(FakeSource(items), engine, [sink], report=lines.append, **options)
    return report, engine, sink, lines


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_every_output_says_which_input_frame_it_came_from_whatever_the_engine_lag(lag):
    report, engine, sink, _ = stream([frame(i) for i in range(1, 7)], LaggingEngine(lag))
    assert [tag for tag, _, _ in sink.written] == [FrameTag(i, (i - 1) / 10) for i in range(1, 7)]
    assert [pixel for _, _, pixel in sink.written] == [1, 2, 3, 4, 5, 6]
    assert engine.flushed and sink.closed
    assert (report.read, report.transformed, report.written, report.dropped) == (6, 6, 6, 0)
    assert report.ended == "end of source" and report.error is None


def test_outputs_reused_by_the_engine_are_marked_and_keep_their_own_input_frame():
    report, _, sink, _ = stream([frame(i) for i in range(1, 6)], SkippingEngine())
    assert [(tag.index, skipped, pixel) for tag, skipped, pixel in sink.written] == [
        (1, False, 1), (2, True, 1), (3, False, 3), (4, True, 3), (5, False, 5)]  # fmt: skip
    assert report.reused == 2 and report.written == 5


def test_frames_that_come_while_the_engine_is_busy_are_dropped_not_queued():
    pushed_first, read_all = threading.Event(), threading.Event()

    class Busy(LaggingEngine):
        def push(self, image, tag):
            pushed_first.set()
            if len(self.pushed) == 0:
                assert read_all.wait(30)  # busy until the source has sent everything
            return super().push(image, tag)

    items = [frame(1), lambda: pushed_first.wait(30), *(frame(i) for i in range(2, 11)),
             read_all.set]  # fmt: skip
    report, engine, sink, _ = stream(items, Busy(), every_frame=False)
    assert engine.pushed == [1, 10]  # only the newest frame waited
    assert (report.read, report.dropped, report.transformed) == (10, 8, 2)
    assert [tag.index for tag, _, _ in sink.written] == [1, 10]


def test_with_every_frame_the_reader_waits_for_the_engine_and_drops_nothing():
    report, engine, _, _ = stream([frame(i) for i in range(1, 30)], LaggingEngine(2))
    assert engine.pushed == list(range(1, 30)) and report.dropped == 0


def test_a_broken_frame_is_reported_in_one_line_and_the_stream_goes_on():
    items = [frame(1), BrokenFrame(2, "it cannot be decoded: invalid data"), frame(3)]
    report, _, sink, lines = stream(items)
    assert [tag.index for tag, _, _ in sink.written] == [1, 3]
    assert lines == ["frame 2 of fake is broken (it cannot be decoded: invalid data): skipped"]
    assert report.broken == 1 and report.error is None


def test_a_source_that_stalls_is_reported_after_the_timeout_and_the_stream_ends_cleanly():
    never = threading.Event()
    try:
        report, engine, sink, lines = stream(
            [frame(1), frame(2), never.wait], LaggingEngine(1), stall_timeout=0.3
        )
    finally:
        never.set()
    assert report.ended == "stalled"
    assert report.error.startswith("the source sent no frame for 0.3 s")
    assert lines == []  # (the error is the report's, for its caller to show once)
    assert [tag.index for tag, _, _ in sink.written] == [1, 2]  # the frame in flight finished
    assert engine.flushed and sink.closed


def test_ctrl_c_ends_the_stream_with_its_outputs_finished():
    class Interrupted(LaggingEngine):
        def push(self, image, tag):
            if tag.index == 3:
                raise KeyboardInterrupt
            return super().push(image, tag)

    source_items = [frame(i) for i in range(1, 9)]
    report, _, sink, _ = stream(source_items, Interrupted())
    assert report.ended == "interrupted (Ctrl-C)" and report.error is None
    assert [tag.index for tag, _, _ in sink.written] == [1, 2] and sink.closed


def test_a_source_that_fails_ends_the_stream_with_its_error():
    def fail():
        raise InputError("camera /dev/video0 was unplugged")

    report, engine, sink, _ = stream([frame(1), frame(2), fail], LaggingEngine(1))
    assert report.ended == "error" and report.error == "fake: camera /dev/video0 was unplugged"
    assert [tag.index for tag, _, _ in sink.written] == [1, 2]  # the frame in flight finished
    assert engine.flushed and sink.closed


def test_a_frame_the_engine_refuses_is_skipped_and_refusals_in_a_row_end_the_stream():
    class Refusing(LaggingEngine):
        def __init__(self, refused):
            super().__init__()
            self.refused = refused

        def push(self, image, tag):
            if tag.index in self.refused:
                raise InputError(f"frame is {image.mode}")
            return super().push(image, tag)

    report, _, sink, lines = stream([frame(i) for i in range(1, 5)], Refusing({2}))
    assert [tag.index for tag, _, _ in sink.written] == [1, 3, 4]
    assert report.failed == 1 and lines == ["frame 2: frame is RGB: skipped"]
    report, _, sink, _ = stream([frame(i) for i in range(1, 9)], Refusing(set(range(2, 9))))
    assert report.ended == "error" and report.failed == 3
    assert report.error == "3 frames in a row were refused, the last: frame is RGB"


def test_an_output_whose_reader_went_away_ends_the_stream_without_an_error():
    class Closing(Sink):
        def write(self, image, tag, skipped):
            if tag.index == 2:
                raise SinkClosed("stdout was closed (the player quit)")
            super().write(image, tag, skipped)

    sink = Closing()
    report = run_stream(FakeSource([frame(i) for i in range(1, 5)]), LaggingEngine(), [sink],
                        every_frame=True)  # fmt: skip
    assert report.ended == "stdout was closed (the player quit)" and report.error is None
    assert sink.closed


def test_max_frames_ends_the_stream_after_that_many_frames():
    report, engine, _, _ = stream([frame(i) for i in range(1, 9)], max_frames=3)
    assert engine.pushed == [1, 2, 3] and report.ended == "3 frames read (--max-frames)"


def test_a_file_source_is_played_at_its_frame_times_and_read_whole():
    source = FakeSource([frame(i) for i in range(1, 4)])
    source.live = False
    sink = Sink()
    report = run_stream(source, LaggingEngine(), [sink], every_frame=False)
    assert report.read == 3 and report.written + report.dropped == 3 and source.closed


def test_the_slot_keeps_only_the_newest_frame_and_counts_the_ones_it_drops():
    slot = FrameSlot()
    for i in range(1, 5):
        slot.put(frame(i))
    assert slot.get(1).index == 4 and slot.dropped == 3
    assert slot.get(0.01) is STALLED
    slot.finish("end of source")
    assert slot.get(1).reason == "end of source"


def test_the_waiting_slot_holds_the_reader_until_its_frame_is_taken():
    slot, taken = FrameSlot(wait=True), []
    reader = threading.Thread(target=lambda: [slot.put(frame(i)) for i in range(1, 4)])
    reader.start()
    for _ in range(3):
        taken.append(slot.get(10).index)
    reader.join(10)
    assert taken == [1, 2, 3] and slot.dropped == 0


def test_a_stopped_slot_releases_a_waiting_reader():
    slot = FrameSlot(wait=True)
    slot.put(frame(1))
    reader = threading.Thread(target=slot.put, args=(frame(2),))
    reader.start()
    slot.stop()
    reader.join(10)
    assert not reader.is_alive() and slot.get(1).index == 1


def test_a_live_device_faster_than_the_engine_loses_frames_only_to_drops():
    """A real FFmpeg input device (lavfi's test pattern, read as a camera is) into a slow engine:
    every frame read is transformed or dropped, and the outputs keep the input order."""
    pytest.importorskip("av")
    import time

    from fastimg.stream.sources import CameraSource, CameraSpec

    class Slow(LaggingEngine):
        def push(self, image, tag):
            time.sleep(0.02)
            return super().push(image, tag)

    camera = CameraSource(CameraSpec("testsrc=size=32x24:rate=200:duration=0.2", "lavfi"))
    sink = Sink()
    report = run_stream(camera, Slow(1), [sink])
    assert report.read == 40 and report.transformed + report.dropped == 40
    indices = [tag.index for tag, _, _ in sink.written]
    assert indices == sorted(set(indices)) and len(indices) == report.transformed


def test_a_sink_that_fails_ends_the_stream_with_its_error_and_every_sink_is_closed():
    from fastimg.errors import OutputError

    class Full(Sink):
        def write(self, image, tag, skipped):
            if tag.index == 2:
                raise OutputError("cannot write out/frame-000002.png: no space left on device")
            super().write(image, tag, skipped)

    full, other = Full(), Sink()
    report = run_stream(FakeSource([frame(i) for i in range(1, 9)]), LaggingEngine(), [full, other],
                        every_frame=True)  # fmt: skip
    assert report.ended == "error" and report.error.endswith("no space left on device")
    assert full.closed and other.closed and report.written == 1


def test_outputs_wait_for_a_slow_sink_in_a_short_queue_not_an_unbounded_one():
    from fastimg.stream.driver import WRITES_WAITING

    release, writing = threading.Event(), threading.Event()

    class Stuck(Sink):
        def write(self, image, tag, skipped):
            writing.set()
            assert release.wait(30)
            super().write(image, tag, skipped)

    engine, sink = LaggingEngine(), Stuck()
    items = [frame(i) for i in range(1, 20)]
    done = threading.Thread(
        target=run_stream, args=(FakeSource(items), engine, [sink]), kwargs={"every_frame": True}
    )
    done.start()
    assert writing.wait(30)
    # one output in the sink, WRITES_WAITING queued, one pushed and waiting for room: no more
    for _ in range(50):
        if len(engine.pushed) == WRITES_WAITING + 2:
            break
        threading.Event().wait(0.05)
    assert len(engine.pushed) == WRITES_WAITING + 2
    release.set()
    done.join(30)
    assert [tag.index for tag, _, _ in sink.written] == list(range(1, 20))


def test_ctrl_c_is_seen_while_the_loop_waits_for_a_frame_whatever_thread_it_landed_on():
    """A signal taken by another thread (the reader's, the engine's pool) leaves the main thread
    asleep in its lock wait: the loop waits in short slices, so Ctrl-C still ends it."""
    import _thread

    never = threading.Event()

    class Interrupting(Sink):
        def write(self, image, tag, skipped):
            super().write(image, tag, skipped)
            threading.Timer(0.2, _thread.interrupt_main).start()  # the signal's flag, no wake-up

    sink = Interrupting()
    # (interrupt_main does nothing where SIGINT is ignored, as in a process started in the
    # background by a non-interactive shell: a terminal's Ctrl-C handler, as the CLI has it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report = run_stream(FakeSource([frame(1), never.wait]), LaggingEngine(), [sink],
                            stall_timeout=60)  # fmt: skip
    finally:
        never.set()
        signal.signal(signal.SIGINT, previous)
    assert report.ended == "interrupted (Ctrl-C)" and len(sink.written) == 1 and sink.closed


def test_the_rate_is_said_as_the_stream_goes():
    lines = []
    report = run_stream(FakeSource([frame(i) for i in range(1, 4)]), LaggingEngine(), [Sink()],
                        every_frame=True, status=lines.append, status_every=0)  # fmt: skip
    assert len(lines) == 3 and report.transformed == 3
    assert lines[-1].startswith("3 frames transformed, ") and lines[-1].endswith("; 0 dropped")
