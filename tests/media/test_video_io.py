"""Video in and out without a pipeline: clips and frame folders read as frames and audio
packets, frames encoded into a video renamed into place whole, OUT names checked."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError, OutputError
from fastimg.media import video_io
from fastimg.media.video_io import Clip, Frame, VideoSink, frame_files, frame_rate, open_clip
from tests.workflows.test_video import leftovers, make_video, pictures, probe

av = pytest.importorskip("av")


def test_frame_times_that_are_missing_or_go_back_are_put_one_frame_on():
    clip = Clip(Path("in.mp4"), Fraction(8), Fraction(1, 16384), 4)
    sink = VideoSink(Path("out.mp4"), clip, {})
    assert [sink._pts(pts) for pts in (None, 2048, 2048, 100, 8192)] == [0, 2048, 4096, 6144, 8192]


def test_a_clip_reads_its_frames_and_audio_and_a_sink_writes_them_back(tmp_path):
    source = make_video(tmp_path / "in.mp4", pictures(6))
    clip = open_clip(source)
    assert (clip.rate, clip.total) == (8, 6) and clip.audio is not None
    out = tmp_path / "out.mkv"
    sink = VideoSink(out, clip, {}, metadata=False)
    frames = 0
    try:
        for item in clip.frames_and_audio():
            if isinstance(item, Frame):
                frames += 1
                assert item.index == frames and item.image.size == (64, 48)
                sink.write(item, item.image)
            else:
                sink.audio(item)
        sink.finish()
    finally:
        clip.close()
    got = probe(out)
    assert got["frames"] == frames == 6 and got["rate"] == 8 and got["audio"] == "aac"
    assert sink.audio_note == "copied (aac)" and leftovers(tmp_path) == []


def test_a_sink_that_is_aborted_leaves_nothing_and_one_without_frames_is_an_error(tmp_path):
    clip = Clip(tmp_path / "in", Fraction(8), Fraction(1, 8), 1)
    sink = VideoSink(tmp_path / "out.mp4", clip, {}, metadata=False)
    sink.write(Frame(1, Image.fromarray(pictures(1)[0]), 0), Image.fromarray(pictures(1)[0]))
    assert leftovers(tmp_path) != []
    sink.abort()
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.mp4").exists()
    with pytest.raises(OutputError, match="no frame was written"):
        VideoSink(tmp_path / "empty.mp4", clip, {}).finish()


def test_frame_folders_are_read_by_content_in_natural_order(tmp_path):
    for i in (10, 2, 1):
        Image.fromarray(pictures(1, seed=i)[0]).save(tmp_path / f"shot{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in frame_files(tmp_path)] == ["shot1.png", "shot2.png", "shot10.png"]
    clip = open_clip(tmp_path, fps=12)
    frames = list(clip.frames_and_audio())
    assert (clip.rate, clip.total, [f.index for f in frames]) == (12, 3, [1, 2, 3])
    assert np.array_equal(np.asarray(frames[0].image), pictures(1, seed=1)[0])
    with pytest.raises(InputError, match="holds no frame images"):
        frame_files(tmp_path / "sub")


def test_frame_rates_are_exact_fractions_within_range():
    assert frame_rate(None) == video_io.DEFAULT_FPS == 24
    assert frame_rate(29.97) == Fraction(2997, 100)
    assert frame_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)
    for bad in (0, -1, 1001):
        with pytest.raises(InputError, match="not between 0 and 1000"):
            frame_rate(bad)


def test_a_video_keeps_its_own_rate(tmp_path):
    source = make_video(tmp_path / "in.mp4", pictures(2), audio_seconds=0)
    with pytest.raises(InputError, match="--fps is for a folder of frames"):
        open_clip(source, fps=10)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("out.mp4", ("mp4", "libx264", "aac")),
        ("OUT.MOV", ("mov", "libx264", "aac")),
        ("out.mkv", ("matroska", "libx264", "aac")),
        ("out.webm", ("webm", "libvpx-vp9", "libopus")),
        ("frames", None),
        ("frames.d", None),
        ("out.avif", None),  # not a suffix the video command reads: a folder, as before
    ],
)
def test_video_format_by_suffix(name, expected):
    assert video_io.video_format(Path(name)) == expected


@pytest.mark.parametrize(
    "suffix", [".avi", ".gif", ".ts", ".png", ".JPG", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"]
)
def test_outputs_named_as_other_videos_or_images_are_refused(suffix):
    with pytest.raises(InputError, match="fastimg writes videos as .mp4, .mov, .mkv, .webm"):
        video_io.video_format(Path(f"out{suffix}"))
