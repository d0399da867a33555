"""The stream's sources: cameras' arguments per OS and their refusals, and real folders, raw
frames and videos read on small generated frames, broken frames included."""

import io
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.stream.sources import (
    BrokenFrame,
    CameraSource,
    CameraSpec,
    InputFrame,
    RawSource,
    camera_spec,
    open_source,
)


def pixels(count: int, width: int = 16, height: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`count` random RGB frames."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize(
    ("source", "system", "device", "fmt"),
    [
        ("/dev/video0", "Linux", "/dev/video0", "v4l2"),
        ("2", "Linux", "/dev/video2", "v4l2"),
        ("0", "Darwin", "0", "avfoundation"),
        ("1:none", "Darwin", "1:none", "avfoundation"),
        ("avfoundation:FaceTime HD Camera", "Darwin", "FaceTime HD Camera", "avfoundation"),
        ("video=Integrated Camera", "Windows", "video=Integrated Camera", "dshow"),
    ],
)
def test_a_camera_is_opened_with_its_os_capture_format_and_ffmpeg_device_name(
    source, system, device, fmt
):
    spec = camera_spec(source, system=system)
    assert (spec.device, spec.format) == (device, fmt)


def test_the_capture_size_and_rate_are_asked_of_the_camera_and_macos_gets_a_rate_it_takes():
    linux = camera_spec("/dev/video0", size=(640, 480), fps=15, system="Linux")
    assert linux.options == {"video_size": "640x480", "framerate": "15"}
    assert camera_spec("/dev/video0", system="Linux").options == {}
    assert camera_spec("0", system="Darwin").options == {"framerate": "30"}
    assert camera_spec("0", fps=25, system="Darwin").options == {"framerate": "25"}


@pytest.mark.parametrize("system", ["Linux", "Darwin", "Windows"])
@pytest.mark.parametrize("source", ["clip.mp4", "frames/", "-", "video.mp4"])
def test_files_folders_and_stdin_are_no_camera(source, system):
    assert camera_spec(source, system=system) is None


def test_a_camera_number_on_windows_is_refused_naming_the_dshow_form():
    with pytest.raises(InputError, match=r"video=NAME .*-list_devices true -f dshow"):
        camera_spec("0", system="Windows")


def test_a_missing_camera_is_refused_in_one_line_naming_it():
    with pytest.raises(InputError) as caught:
        open_source("/dev/video987", system="Linux")
    message = str(caught.value)
    assert "\n" not in message and "/dev/video987 does not exist" in message
    assert "v4l2-ctl --list-devices" in message


def test_a_device_that_is_no_camera_is_refused_in_one_line_from_pyav():
    pytest.importorskip("av")
    with pytest.raises(InputError) as caught:
        CameraSource(CameraSpec("/dev/null", "v4l2"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("camera /dev/null (v4l2) cannot be opened")


def test_a_source_that_is_nothing_is_refused_naming_what_a_source_can_be(tmp_path):
    with pytest.raises(InputError, match="does not exist: SOURCE is a camera"):
        open_source(str(tmp_path / "nothing.mp4"))


def test_a_folder_gives_its_frames_in_order_and_a_truncated_png_as_a_broken_frame(tmp_path):
    frames = pixels(4)
    for i, values in enumerate(frames, 1):
        Image.fromarray(values).save(tmp_path / f"f{i}.png")
    whole = (tmp_path / "f3.png").read_bytes()
    (tmp_path / "f3.png").write_bytes(whole[: len(whole) // 2])
    source = open_source(str(tmp_path), fps=10)
    got = list(source.frames())
    assert [type(item) for item in got] == [InputFrame, InputFrame, BrokenFrame, InputFrame]
    assert [item.index for item in got] == [1, 2, 3, 4]
    assert "f3.png is damaged or truncated" in got[2].reason
    assert [got[i].time for i in (0, 1, 3)] == [0.0, 0.1, pytest.approx(0.3)]
    assert np.array_equal(np.asarray(got[3].image), frames[3])
    assert source.rate == Fraction(10) and not source.live


def test_raw_frames_on_stdin_are_read_whole_and_a_short_read_at_the_end_is_a_broken_frame():
    frames = pixels(3)
    data = b"".join(values.tobytes() for values in frames)
    source = RawSource(io.BytesIO(data + frames[0].tobytes()[:100]), (16, 8), fps=5)
    got = list(source.frames())
    assert [type(item) for item in got] == [InputFrame] * 3 + [BrokenFrame]
    for item, values in zip(got, frames, strict=False):
        assert np.array_equal(np.asarray(item.image), values)
    assert [item.time for item in got[:3]] == [0.0, 0.2, 0.4]
    assert got[3].index == 4 and "100 of the 384 bytes of a 16x8 rgb24 frame" in got[3].reason


def test_raw_frames_end_cleanly_at_the_end_of_stdin():
    assert list(RawSource(io.BytesIO(b""), (16, 8)).frames()) == []


class Trickle(io.RawIOBase):
    """A pipe that gives a few bytes at a time."""

    def __init__(self, data: bytes):
        self.data = data

    def readable(self):
        return True

    def read(self, size=-1):
        step = 7 if size < 0 else min(7, size)
        part, self.data = self.data[:step], self.data[step:]
        return part


def test_raw_frames_arriving_in_pieces_are_put_together():
    frames = pixels(2)
    got = list(RawSource(Trickle(b"".join(f.tobytes() for f in frames)), (16, 8)).frames())
    assert len(got) == 2 and np.array_equal(np.asarray(got[1].image), frames[1])


def test_raw_frames_need_their_size():
    with pytest.raises(InputError, match="need their size: pass --size WIDTHxHEIGHT"):
        open_source("-", stdin=io.BytesIO(b""))


def test_a_video_file_gives_its_frames_at_their_times(tmp_path):
    pytest.importorskip("av")
    from tests.workflows.test_video import make_video, pictures

    make_video(tmp_path / "clip.mp4", pictures(5), fps=10, audio_seconds=0)
    source = open_source(str(tmp_path / "clip.mp4"))
    got = list(source.frames())
    assert [item.index for item in got] == [1, 2, 3, 4, 5]
    assert all(isinstance(item, InputFrame) for item in got)
    assert [item.time for item in got] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert source.rate == 10 and not source.live


def test_an_image_or_a_damaged_file_given_as_a_video_is_refused(tmp_path):
    pytest.importorskip("av")
    Image.fromarray(pixels(1)[0]).save(tmp_path / "still.png")
    with pytest.raises(InputError, match="is an image, not a video"):
        open_source(str(tmp_path / "still.png"))
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="cannot be read as a video"):
        open_source(str(tmp_path / "junk.mp4"))
    with pytest.raises(InputError, match="--fps is for a folder"):
        open_source(str(tmp_path / "junk.mp4"), fps=5)


def test_a_live_device_is_read_as_a_camera_is(tmp_path):
    """FFmpeg's lavfi test pattern is an input device as v4l2 is: the camera path read for real."""
    pytest.importorskip("av")
    camera = CameraSource(CameraSpec("testsrc=size=32x24:rate=10:duration=0.5", "lavfi"))
    got = list(camera.frames())
    assert [item.index for item in got] == [1, 2, 3, 4, 5] and camera.live
    assert [item.time for item in got] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert got[0].image.size == (32, 24) and got[0].image.mode == "RGB"
    assert camera.name == "camera testsrc=size=32x24:rate=10:duration=0.5"


def test_a_damaged_frame_in_a_video_is_a_broken_frame_and_the_frames_after_it_come(tmp_path):
    pytest.importorskip("av")
    from tests.workflows.test_video import make_video, pictures

    data = bytearray(make_video(tmp_path / "clip.mp4", pictures(12), audio_seconds=0).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 300] = bytes(300)
    (tmp_path / "damaged.mp4").write_bytes(data)
    got = list(open_source(str(tmp_path / "damaged.mp4")).frames())
    assert [item.index for item in got] == list(range(1, 13))
    (broken,) = [item for item in got if isinstance(item, BrokenFrame)]
    assert broken.reason.startswith("it cannot be decoded: invalid data")


def test_a_video_that_ends_before_the_frames_it_states_says_so_in_a_broken_frame(tmp_path):
    av = pytest.importorskip("av")

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:  # (the index first)
        stream = out.add_stream("libx264", rate=8, width=32, height=24)
        for values in pixels(12, 32, 24):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(values, format="rgb24")))
        out.mux(stream.encode(None))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    got = list(open_source(str(path)).frames())
    assert isinstance(got[-1], BrokenFrame) and 1 < len(got) < 13
    assert got[-1].reason == (
        f"the video ends here, after {len(got) - 1} of the 12 frames it states (truncated?)"
    )


def test_a_size_for_a_folder_or_a_video_is_refused(tmp_path):
    with pytest.raises(InputError, match="--size is for raw frames on stdin or a camera"):
        open_source(str(tmp_path), size=(64, 48))
