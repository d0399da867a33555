"""The stream's outputs: frames named and labelled by their input frame, a video at the input
frames' times, raw frames on stdout, the virtual camera (a stand-in pyvirtualcam, and its
refusal where it is missing), the frame log."""

import io
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError, MissingDependencyError, OutputError
from fastimg.stream.driver import FrameTag, SinkClosed
from fastimg.stream.sinks import FolderSink, FrameLog, StdoutSink, VideoFileSink, VirtualCameraSink

LABELS = {"fastimg:prompt": "a fox", "fastimg:negative_prompt": "", "fastimg:seed": 0,
          "fastimg:strength": 0.5, "fastimg:steps": 2, "fastimg:guidance": 0.0,
          "fastimg:scheduler": "euler"}  # fmt: skip


def output(value: int, size=(32, 16)) -> Image.Image:
    """An engine output: flat colour `value`, the pipeline's labels in its info."""
    image = Image.new("RGB", size, (value, 255 - value, 0))
    image.info.update(LABELS)
    return image


def test_frames_are_named_and_labelled_by_the_input_frame_they_came_from(tmp_path):
    from fastimg.media.label_reader import read_labels

    sink = FolderSink(tmp_path / "out")
    sink.write(output(10), FrameTag(3, 0.125), False)
    sink.write(output(20), FrameTag(7, 0.5), True)
    sink.close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "frame-000003.png", "frame-000007.png"]  # fmt: skip
    labels = read_labels(tmp_path / "out" / "frame-000007.png")["fastimg"]
    assert labels["fastimg:input_frame"] == "7" and labels["fastimg:input_time"] == "0.500"
    assert labels["fastimg:reused"] == "True" and labels["fastimg:prompt"] == "a fox"


def test_a_folder_holding_frames_is_refused_without_overwrite(tmp_path):
    output(0).save(tmp_path / "frame-000001.png")
    with pytest.raises(InputError, match="already holds frames: pass --overwrite"):
        FolderSink(tmp_path)
    FolderSink(tmp_path, overwrite=True)
    with pytest.raises(InputError, match="is a file"):
        FolderSink(tmp_path / "frame-000001.png")


def test_frames_without_metadata_carry_no_labels(tmp_path):
    sink = FolderSink(tmp_path, metadata=False)
    sink.write(output(0), FrameTag(1, 0.0), False)
    with Image.open(tmp_path / "frame-000001.png") as image:
        assert not image.text


def test_a_video_places_each_output_at_its_input_frames_time_and_appears_whole(tmp_path):
    av = pytest.importorskip("av")
    dest = tmp_path / "live.mp4"
    sink = VideoFileSink(dest, 10, "/dev/video0")
    times = [0.0, 0.1, 0.4, 0.5]  # frames 3 and 4 were dropped
    for i, when in enumerate(times):
        sink.write(output(40 * i), FrameTag(i + 1, when), False)
    assert not dest.exists()  # written beside it until the stream ends
    sink.close()
    with av.open(str(dest)) as container:
        decoded = list(container.decode(video=0))
        comment = container.metadata.get("comment", "")
    assert [round(float(f.time), 2) for f in decoded] == times
    assert [f.width for f in decoded] == [32] * 4 and "a fox" in comment
    assert not [p for p in tmp_path.iterdir() if p.name != "live.mp4"]


def test_a_video_is_refused_where_it_exists_and_none_is_written_without_outputs(tmp_path):
    pytest.importorskip("av")
    (tmp_path / "old.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="already exists: pass --overwrite"):
        VideoFileSink(tmp_path / "old.mp4", 10, "cam")
    sink = VideoFileSink(tmp_path / "none.mp4", None, "cam")
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]


def test_stdout_gets_raw_rgb24_frames_all_of_the_first_outputs_size():
    stream = io.BytesIO()
    sink = StdoutSink(stream)
    sink.write(output(10), FrameTag(1, 0.0), False)
    sink.write(output(20, size=(64, 32)), FrameTag(2, 0.1), False)
    sink.close()
    data = np.frombuffer(stream.getvalue(), np.uint8).reshape(2, 16, 32, 3)
    assert np.array_equal(data[0], np.asarray(output(10)))
    assert (data[1] == (20, 235, 0)).all()


def test_a_player_that_quits_closes_the_stream_not_as_an_error():
    class Closed(io.BytesIO):
        def write(self, data):
            raise BrokenPipeError

    with pytest.raises(SinkClosed, match="stdout was closed"):
        StdoutSink(Closed()).write(output(0), FrameTag(1, 0.0), False)


def test_without_pyvirtualcam_the_virtual_camera_is_refused_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fastimg\[stream\]'"):
        VirtualCameraSink(30)


def fake_pyvirtualcam(fail: str | None = None):
    """A stand-in for pyvirtualcam recording what it is sent."""
    cameras = []

    class Camera:
        def __init__(self, width, height, fps, fmt=None):
            if fail:
                raise RuntimeError(fail)
            self.width, self.height, self.fps, self.fmt = width, height, fps, fmt
            self.sent, self.closed = [], False
            cameras.append(self)

        def send(self, frame):
            self.sent.append(frame.copy())

        def close(self):
            self.closed = True

    module = types.SimpleNamespace(Camera=Camera, PixelFormat=types.SimpleNamespace(RGB="rgb"))
    return module, cameras


def test_the_virtual_camera_gets_every_output_at_the_first_outputs_size(monkeypatch):
    module, cameras = fake_pyvirtualcam()
    monkeypatch.setitem(sys.modules, "pyvirtualcam", module)
    sink = VirtualCameraSink(15)
    sink.write(output(10), FrameTag(1, 0.0), False)
    sink.write(output(30, size=(16, 8)), FrameTag(2, 0.1), False)
    sink.close()
    (camera,) = cameras
    assert (camera.width, camera.height, camera.fps, camera.fmt) == (32, 16, 15.0, "rgb")
    assert [frame.shape for frame in camera.sent] == [(16, 32, 3)] * 2 and camera.closed
    assert np.array_equal(camera.sent[0], np.asarray(output(10)))


def test_no_virtual_camera_device_is_an_output_error_in_one_line(monkeypatch):
    module, _ = fake_pyvirtualcam(fail="'v4l2loopback' backend: no v4l2 loopback device\nfound")
    monkeypatch.setitem(sys.modules, "pyvirtualcam", module)
    with pytest.raises(OutputError) as caught:
        VirtualCameraSink(None).write(output(0), FrameTag(1, 0.0), False)
    assert "\n" not in str(caught.value) and "load v4l2loopback" in str(caught.value)


def test_the_frame_log_says_which_input_frame_each_output_came_from(tmp_path):
    log = FrameLog(tmp_path / "frames.jsonl")
    log.write(output(0), FrameTag(4, 0.3333), False)
    log.write(output(0), FrameTag(9, 0.8), True)
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert lines == [
        {"output": 1, "input_frame": 4, "input_time": 0.333, "reused": False},
        {"output": 2, "input_frame": 9, "input_time": 0.8, "reused": True},
    ]
    with pytest.raises(InputError, match="already exists"):
        FrameLog(tmp_path / "frames.jsonl")


def test_the_extra_the_refusal_names_installs_pyvirtualcam_and_pyav():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert any(need.startswith("pyvirtualcam") for need in extras["stream"])
    assert "fastimg[video]" in extras["stream"]


def test_a_frame_log_of_a_stream_that_made_nothing_is_not_left_behind(tmp_path):
    FrameLog(tmp_path / "frames.jsonl").close()
    assert not (tmp_path / "frames.jsonl").exists()
