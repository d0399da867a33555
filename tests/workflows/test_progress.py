import io

import pytest

from fastimg.workflows.progress import BatchProgress, Progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Stream(io.StringIO):
    def __init__(self, tty: bool = False):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def run_image(progress: BatchProgress, clock: FakeClock, label: str, steps: int = 4, dt=1.0):
    progress.start(label, steps)
    for _ in range(steps):
        clock.advance(dt)
        progress.step()
    progress.finish(f"out/{label}.png")


@pytest.mark.parametrize("tty,mode", [(False, "lines"), (True, "bar")])
def test_auto_picks_the_bar_for_a_terminal_and_lines_otherwise(tty, mode):
    assert BatchProgress(3, stream=Stream(tty)).mode == mode


def test_streams_without_isatty_get_lines_and_unknown_modes_are_refused():
    class Plain:
        def write(self, text):
            pass

    assert BatchProgress(1, stream=Plain()).mode == "lines"
    with pytest.raises(ValueError, match="mode must be one of"):
        BatchProgress(1, stream=Stream(), mode="fancy")


def test_lines_mode_prints_one_line_per_finished_or_failed_image():
    clock, stream = FakeClock(), Stream()
    progress = BatchProgress(3, stream=stream, clock=clock)
    run_image(progress, clock, "a-s0.5-42", steps=4, dt=2.5)
    progress.start("b", 4)
    clock.advance(0.5)
    progress.step()
    progress.fail("b", "CUDA out of memory\nTraceback ...")
    run_image(progress, clock, "c", steps=4, dt=1.0)
    progress.close()

    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and stream.getvalue().endswith("\n")
    assert len(lines) == 3
    assert lines[0].startswith("[1/3] out/a-s0.5-42.png  10.0 s  elapsed 0:10  ETA 0:20")
    assert lines[1].startswith("error: b: CUDA out of memory Traceback ...  [2/3]  elapsed 0:11")
    assert lines[2].startswith("[3/3] out/c.png  4.0 s  elapsed 0:15  ETA 0:00")


def test_skipped_outputs_count_as_done_and_are_left_out_of_the_timing():
    clock, stream = FakeClock(), Stream()
    seen: list[Progress] = []
    progress = BatchProgress(4, stream=stream, clock=clock, callback=seen.append)
    clock.advance(30)
    progress.skip("out/old.png")
    assert seen[-1].done == 1 and seen[-1].eta is None and seen[-1].rate is None
    run_image(progress, clock, "new", steps=5, dt=2.0)
    p = seen[-1]
    assert p.done == 2 and p.rate == pytest.approx(1 / 10)
    assert p.eta == pytest.approx(2 * 5 * 2.0)  # two images left of 5 steps at 2 s per step
    assert stream.getvalue().splitlines()[0] == "[1/4] out/old.png  skipped (exists)"


def test_eta_is_the_steps_left_times_the_average_time_per_finished_step():
    clock = FakeClock()
    seen: list[Progress] = []
    progress = BatchProgress(4, mode="quiet", clock=clock, callback=seen.append)
    progress.start("a", 4)
    assert seen[-1].eta is None and seen[-1].rate is None
    run_image(progress, clock, "a", steps=4, dt=1.0)
    run_image(progress, clock, "b", steps=4, dt=1.0)
    assert seen[-1].eta == pytest.approx(2 * 4 * 1.0)
    assert seen[-1].rate == pytest.approx(1 / 4)
    assert seen[-1].elapsed == pytest.approx(8.0)

    progress.start("c", 8)  # the image in work counts by its own steps
    assert seen[-1].eta == pytest.approx((8 + 4) * 1.0)
    clock.advance(3)
    progress.step(3)
    assert (seen[-1].step, seen[-1].steps, seen[-1].current) == (3, 8, "c")
    assert seen[-1].eta == pytest.approx((5 + 4) * 1.0)
    progress.fail("c", "nan in latents")  # failures are not timed either
    assert seen[-1].eta == pytest.approx(4 * 1.0)
    assert seen[-1].last == "c: nan in latents" and seen[-1].failed == 1
    run_image(progress, clock, "d", steps=4, dt=1.0)
    assert seen[-1].eta == 0.0 and seen[-1].done == 3 and seen[-1].last == "out/d.png"


def test_quiet_prints_nothing_but_the_callback_sees_every_event():
    clock, stream = FakeClock(), Stream(tty=True)
    seen: list[Progress] = []
    with BatchProgress(2, stream=stream, mode="quiet", clock=clock, callback=seen.append) as p:
        run_image(p, clock, "a", steps=3)
        p.skip("out/b.png")
    assert stream.getvalue() == ""
    assert len(seen) == 1 + 3 + 1 + 1  # start, steps, finish, skip
    assert [s.step for s in seen[:5]] == [0, 1, 2, 3, 0]
    assert seen[-1].done == 2 and seen[-1].total == 2


def test_bar_redraws_in_place_and_ends_its_line_on_close():
    clock, stream = FakeClock(), Stream(tty=True)
    progress = BatchProgress(2, stream=stream, clock=clock)
    run_image(progress, clock, "a", steps=4)
    progress.start("b", 4)
    clock.advance(1)
    progress.step()
    out = stream.getvalue()
    assert out.count("\r") >= 3 and "\n" not in out
    last = out.rsplit("\r", 1)[1]
    assert "1/2 images" in last and "step 1/4" in last and "ETA 0:03" in last and "0:05" in last
    assert last.rstrip().endswith("b")
    progress.close()
    progress.close()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1


def test_bar_redraws_on_steps_at_most_every_tenth_of_a_second():
    clock, stream = FakeClock(), Stream(tty=True)
    progress = BatchProgress(1, stream=stream, clock=clock)
    progress.start("a", 100)
    for _ in range(100):
        clock.advance(0.01)
        progress.step()
    redraws = stream.getvalue().count("\r")
    assert 1 + 8 <= redraws <= 1 + 11
    progress.close()
    assert "step 100/100" in stream.getvalue().rsplit("\r", 1)[1]  # drawn on close


def test_a_failure_in_bar_mode_is_printed_on_its_own_line_and_the_bar_redrawn():
    clock, stream = FakeClock(), Stream(tty=True)
    progress = BatchProgress(2, stream=stream, clock=clock)
    progress.start("cat.png", 4)
    progress.fail("cat.png", "image too large")
    progress.close()
    out = stream.getvalue()
    blank, message, redrawn = out.split("\r")[-3:]
    assert blank.strip() == "" and len(blank) > 20  # the old bar blanked out
    assert message.startswith("error: cat.png: image too large\n")
    assert "1 failed" in redrawn and redrawn.endswith("\n")


def test_frames_per_second_are_shown_for_frames():
    clock, stream = FakeClock(), Stream(tty=True)
    progress = BatchProgress(10, stream=stream, clock=clock, unit="frame")
    for i in range(2):
        run_image(progress, clock, f"frame-{i}", steps=2, dt=0.25)
    assert "2/10 frames" in stream.getvalue() and "2.00 frames/s" in stream.getvalue()
    log = Stream()
    lines = BatchProgress(10, stream=log, clock=clock, unit="frame")
    run_image(lines, clock, "frame-0", steps=2, dt=0.25)
    assert log.getvalue().rstrip().endswith("2.00 frames/s")


def test_bar_stays_on_one_terminal_line_whatever_the_labels():
    clock, stream = FakeClock(), Stream(tty=True)
    progress = BatchProgress(1, stream=stream, clock=clock)
    progress.start("猫" * 100 + "\nsecond line\r", 4)
    drawn = stream.getvalue().split("\r")[-1]
    assert "\n" not in drawn
    assert sum(2 if ch == "猫" else 1 for ch in drawn) <= 79


@pytest.mark.parametrize(
    "seconds,text", [(0, "0:00"), (59.6, "1:00"), (90, "1:30"), (3600 + 61, "1:01:01")]
)
def test_eta_is_formatted_as_minutes_or_hours(seconds, text):
    clock, stream = FakeClock(), Stream()
    progress = BatchProgress(2, stream=stream, clock=clock)
    run_image(progress, clock, "a", steps=1, dt=seconds)
    assert f"ETA {text}" in stream.getvalue()


def test_output_of_its_own_goes_between_bar_redraws_not_into_the_bar():
    clock, stream = FakeClock(), Stream(tty=True)
    progress = BatchProgress(2, stream=stream, clock=clock)
    progress.start("a.png", 4)
    drawn = stream.getvalue()
    progress.aside(lambda: stream.write("out/a.png\n"))
    after = stream.getvalue()[len(drawn) :]
    cleared, rest = after.split("out/a.png\n")
    assert cleared.startswith("\r") and cleared.strip() == ""  # the bar wiped first
    assert rest.startswith("\r[") and "0/2 images" in rest  # then drawn again below
    progress.close()
    lines = BatchProgress(1, stream=Stream(), clock=clock)
    lines.aside(lambda: lines.stream.write("x\n"))
    assert lines.stream.getvalue() == "x\n"
