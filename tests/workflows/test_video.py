import errno
import io
import logging
import os
import wave
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import EngineError, InputError, OutputError
from fastimg.media import video_io
from fastimg.media.label_reader import read_labels
from fastimg.media.video_io import frame_files
from fastimg.settings import CallSettings
from fastimg.workflows import video
from fastimg.workflows.video import FrameProgress, transform_video

av = pytest.importorskip("av")

CALL = CallSettings("a red fox", strength=0.5, num_inference_steps=2, guidance_scale=3.0, seed=0)
WIDTH, HEIGHT = 64, 48


def pictures(count: int, static=(), seed: int = 0) -> list[np.ndarray]:
    """`count` frames of random 8x8 blocks; those numbered in `static` repeat the one before."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        if i in static:
            frames.append(frames[-1])
            continue
        blocks = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
        frames.append(blocks.repeat(8, axis=0).repeat(8, axis=1))
    return frames


def make_video(path, frames, fps=8, audio_seconds=1.5, times_ms=None):
    """`frames` as H.264 at `fps` (or at `times_ms`), with a mono 440 Hz AAC tone."""
    with av.open(str(path), "w") as out:
        timing = {} if times_ms is None else {"time_base": Fraction(1, 1000)}
        stream = out.add_stream("libx264", rate=fps, width=WIDTH, height=HEIGHT, **timing)
        sound = out.add_stream("aac", rate=44100) if audio_seconds else None
        if sound is not None:
            sound.layout = "mono"
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i if times_ms is None else times_ms[i]
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            t = np.arange(int(audio_seconds * 44100)) / 44100
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, k : k + 1024], format="flt",
                                                   layout="mono")  # fmt: skip
                chunk.sample_rate, chunk.pts = 44100, k
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def probe(path) -> dict:
    """What a video holds: frame count and times, frame rate, size, audio codec and seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, metadata = stream.average_rate, {k.lower(): v for k, v in container.metadata.items()}
        audio = container.streams.audio[0] if container.streams.audio else None
        times, sizes, seconds = [], set(), 0.0
        for packet in container.demux():
            if packet.stream.type == "audio" and packet.duration:
                seconds += float(packet.duration * packet.time_base)
            for frame in packet.decode() if packet.stream.type == "video" else ():
                times.append(round(frame.time, 3))
                sizes.add((frame.width, frame.height))
        return {
            "frames": len(times),
            "times": times,
            "rate": rate,
            "sizes": sizes,
            "audio": audio.codec_context.name if audio else None,
            "audio_seconds": seconds,
            "metadata": metadata,
        }


def decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class Interrupted:
    """A pipeline that is stopped (Ctrl-C) at its `stop_at`-th call."""

    def __init__(self, pipe, stop_at: int):
        self.pipe, self.stop_at, self.calls = pipe, stop_at, 0

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.pipe(*args, **kwargs)


@pytest.fixture(scope="module")
def pipe(tiny):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames at 8 fps with 1.5 s of AAC; frames 6 to 8 repeat frame 5."""
    return make_video(tmp_path_factory.mktemp("clip") / "in.mp4", pictures(12, static=(5, 6, 7)))


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part-" in p.name)


def test_a_video_keeps_its_frames_rate_times_and_audio_and_is_labelled(pipe, clip, tmp_path):
    out = tmp_path / "out.mp4"
    report = transform_video(pipe, clip, out, call=CALL)
    got, want = probe(out), probe(clip)
    assert got["frames"] == want["frames"] == 12 == report.frames == report.written
    assert got["rate"] == want["rate"] == 8
    assert got["times"] == want["times"]
    assert got["sizes"] == {(WIDTH, HEIGHT)}
    assert got["audio"] == want["audio"] == "aac" and report.audio == "copied (aac)"
    assert got["audio_seconds"] == pytest.approx(want["audio_seconds"], abs=0.05)
    assert got["audio_seconds"] == pytest.approx(1.5, abs=0.05)
    comment = got["metadata"]["comment"]
    assert comment.startswith("a red fox\n") and "Seed: 0" in comment
    assert "Denoising strength: 0.5" in comment and f"Size: {WIDTH}x{HEIGHT}" in comment
    assert report.transformed + report.reused == 12 and report.seconds > 0
    assert leftovers(tmp_path) == []


def test_webm_gets_vp9_and_the_aac_audio_re_encoded_to_opus(pipe, clip, tmp_path):
    out = tmp_path / "out.webm"
    report = transform_video(pipe, clip, out, call=CALL)
    got = probe(out)
    assert got["frames"] == 12 and got["rate"] == 8 and got["audio"] == "opus"
    assert got["audio_seconds"] == pytest.approx(1.5, abs=0.1)
    assert report.audio.startswith("re-encoded (aac to")
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"


def test_nearly_unchanged_frames_reuse_the_last_output(pipe, clip, tmp_path):
    lines = io.StringIO()
    progress = FrameProgress(12, stream=lines, mode="lines")
    report = transform_video(pipe, clip, tmp_path / "frames", progress=progress, call=CALL)
    assert (report.transformed, report.reused, report.written) == (9, 3, 12)
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"frame-{i:06d}.png" for i in range(1, 13)]
    still = [pixels(tmp_path / "frames" / f"frame-{i:06d}.png") for i in range(5, 9)]
    assert all(np.array_equal(still[0], other) for other in still[1:])
    assert not np.array_equal(still[0], pixels(tmp_path / "frames" / "frame-000009.png"))
    labels = read_labels(tmp_path / "frames" / "frame-000007.png")
    assert labels["fastimg"]["fastimg:reused_from"] == "5"
    assert labels["parameters"].startswith("a red fox") and labels["digital_source_type"]
    text = lines.getvalue()
    assert text.count("reused (input nearly unchanged)") == 3 and "frames/s" in text

    none = transform_video(pipe, clip, tmp_path / "all", reuse_threshold=0, call=CALL)
    assert (none.transformed, none.reused) == (12, 0)


def test_every_frame_gets_the_same_seed_and_so_the_same_noise(pipe, tmp_path):
    a, b = pictures(2, seed=1)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, picture in (("f1.png", a), ("f2.png", b), ("f3.png", a)):
        Image.fromarray(picture).save(folder / name)
    out = tmp_path / "out"
    report = transform_video(pipe, folder, out, reuse_threshold=0, call=CALL)
    assert (report.transformed, report.reused) == (3, 0)
    first, second, third = (pixels(out / f"frame-{i:06d}.png") for i in (1, 2, 3))
    assert np.array_equal(first, third) and not np.array_equal(first, second)
    alone = pipe("a red fox", Image.fromarray(a), strength=0.5, num_inference_steps=2,
                 guidance_scale=3.0, seed=0)[0]  # fmt: skip
    assert np.array_equal(first, np.asarray(alone))


def test_frame_folders_are_read_in_natural_order_and_made_into_a_video(pipe, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    frames = pictures(12, seed=2)
    for i, picture in enumerate(frames, 1):
        Image.fromarray(picture).save(folder / f"shot{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.png").write_bytes(b"")
    assert [p.name for p in frame_files(folder)] == [f"shot{i}.png" for i in range(1, 13)]

    out = tmp_path / "out.mp4"
    report = transform_video(pipe, folder, out, fps=12, call=CALL)
    got = probe(out)
    assert got["frames"] == report.frames == 12 and got["rate"] == 12 and got["audio"] is None
    assert got["times"] == [round(i / 12, 3) for i in range(12)]
    default = transform_video(pipe, folder, tmp_path / "default.mkv", call=CALL)
    assert probe(default.output)["rate"] == 24


def test_variable_frame_times_are_kept(pipe, tmp_path):
    times = [0, 125, 375, 500, 875]
    clip = make_video(tmp_path / "vfr.mkv", pictures(5, seed=3), audio_seconds=0, times_ms=times)
    out = tmp_path / "out.mkv"
    transform_video(pipe, clip, out, call=CALL)
    assert probe(out)["times"] == probe(clip)["times"] == [t / 1000 for t in times]


def test_resume_keeps_the_frames_already_written(pipe, clip, tmp_path):
    out = tmp_path / "frames"
    transform_video(pipe, clip, out, reuse_threshold=0, call=CALL)
    redo = {3: pixels(out / "frame-000003.png"), 9: pixels(out / "frame-000009.png")}
    for i in redo:
        (out / f"frame-{i:06d}.png").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    with pytest.raises(InputError, match="already holds frames .*--resume"):
        transform_video(pipe, clip, out, reuse_threshold=0, call=CALL)
    with pytest.raises(InputError, match="was made with seed '0', but this run uses '7'"):
        transform_video(
            pipe, clip, out, reuse_threshold=0, resume=True, call=CALL.with_values(seed=7)
        )
    report = transform_video(pipe, clip, out, reuse_threshold=0, resume=True, call=CALL)
    assert (report.kept, report.transformed, report.written) == (10, 2, 2)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    for i, before in redo.items():
        assert np.array_equal(pixels(out / f"frame-{i:06d}.png"), before)


def test_an_interrupted_video_leaves_nothing_and_resumes_from_its_frames(pipe, clip, tmp_path):
    out, frames = tmp_path / "out.mp4", tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt):
        transform_video(Interrupted(pipe, 5), clip, out, frames_dir=frames, call=CALL)
    assert not out.exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in frames.iterdir()) == [f"frame-{i:06d}.png" for i in (1, 2, 3, 4)]

    with pytest.raises(InputError, match="needs the finished frames kept"):
        transform_video(pipe, clip, out, resume=True, call=CALL)
    report = transform_video(pipe, clip, out, frames_dir=frames, resume=True, call=CALL)
    assert (report.kept, report.frames, report.written) == (4, 12, 12)
    assert probe(out)["frames"] == 12 and len(list(frames.iterdir())) == 12


def test_an_existing_video_is_refused_and_kept_unless_overwritten(pipe, clip, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier video")
    with pytest.raises(InputError, match="already exists: pass --overwrite"):
        transform_video(pipe, clip, out, call=CALL)
    assert out.read_bytes() == b"an earlier video"
    os.chmod(out, 0o640)
    transform_video(pipe, clip, out, overwrite=True, call=CALL)
    assert probe(out)["frames"] == 12 and out.stat().st_mode & 0o777 == 0o640


def _wav(path):
    with wave.open(str(path), "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(b"\0\0" * 800)


@pytest.mark.parametrize(
    "name,make,reason",
    [
        ("notes.mp4", lambda p, clip: p.write_text("not a video"), "cannot be read as a video"),
        ("cut.mp4", lambda p, clip: p.write_bytes(clip.read_bytes()[:3000]), "truncated"),
        ("tone.wav", lambda p, clip: _wav(p), "has no video stream"),
        ("still.png", lambda p, clip: Image.new("RGB", (64, 48)).save(p), "is an image"),
        ("missing.mp4", lambda p, clip: None, "does not exist"),
    ],
)
def test_inputs_that_are_not_videos_are_refused_before_any_work(
    pipe, clip, tmp_path, name, make, reason
):
    source = tmp_path / name
    make(source, clip)
    with pytest.raises(InputError, match=reason) as caught:
        transform_video(pipe, source, tmp_path / "out.mp4", call=CALL)
    assert str(source) in str(caught.value)
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "call,reason",
    [
        (CALL.with_values(strength=0.1), r"in.mp4 \(strength 0.1, seed 0\): .*zero denoising"),
        (CALL.with_values(num_images_per_prompt=2), "one image per frame, not 2"),
    ],
)
def test_settings_that_cannot_make_a_video_are_refused_before_any_work(
    pipe, clip, tmp_path, call, reason
):
    with pytest.raises(InputError, match=reason):
        transform_video(pipe, clip, tmp_path / "out.mp4", call)
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def full_disk(monkeypatch, room: int = 1000):
    """Make the temporary video file fail with ENOSPC after `room` bytes."""
    real = video_io._part_file

    def part_file(dest):
        path, file = real(dest)
        return path, FullDisk(file, room)

    monkeypatch.setattr(video_io, "_part_file", part_file)


def test_a_full_disk_leaves_no_partial_video_and_the_old_one_intact(
    pipe, clip, tmp_path, monkeypatch
):
    full_disk(monkeypatch)
    out = tmp_path / "out.mp4"
    with pytest.raises(OutputError, match="No space left on device|no space left on device") as e:
        transform_video(pipe, clip, out, call=CALL)
    assert str(out) in str(e.value)
    assert not out.exists() and leftovers(tmp_path) == []
    out.write_bytes(b"an earlier video")
    with pytest.raises(OutputError):
        transform_video(pipe, clip, out, overwrite=True, call=CALL)
    assert out.read_bytes() == b"an earlier video" and leftovers(tmp_path) == []


def test_a_missing_encoder_is_named_with_suffixes_that_work(clip, tmp_path, monkeypatch):
    monkeypatch.setitem(video_io.VIDEO_FORMATS, ".mp4", ("mp4", "no-such-encoder", "aac"))
    with pytest.raises(EngineError, match="no no-such-encoder encoder for .mp4: write .mov"):
        video.plan_video(clip, tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


def test_no_audio_leaves_the_audio_out(pipe, clip, tmp_path):
    report = transform_video(pipe, clip, tmp_path / "out.mp4", audio=False, call=CALL)
    assert probe(tmp_path / "out.mp4")["audio"] is None and report.audio == "left out"


def test_audio_that_fits_nowhere_is_dropped_with_a_warning(pipe, clip, tmp_path, monkeypatch):
    monkeypatch.setitem(video_io.VIDEO_FORMATS, ".webm", ("webm", "libvpx-vp9", "no-such-audio"))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fastimg").addHandler(handler)
    try:
        report = transform_video(pipe, clip, tmp_path / "out.webm", call=CALL)
    finally:
        logging.getLogger("fastimg").removeHandler(handler)
    got = probe(tmp_path / "out.webm")
    assert got["audio"] is None and got["frames"] == 12 and report.audio.startswith("dropped")
    assert any("without it" in record.getMessage() for record in records)


def test_reused_video_frames_are_encoded_alike(pipe, clip, tmp_path):
    out = tmp_path / "out.mkv"
    transform_video(pipe, clip, out, audio=False, call=CALL)
    frames = [frame.astype(np.int16) for frame in decoded(out)]
    change = [float(np.abs(frames[4] - frame).mean()) for frame in frames]
    assert max(change[5:8]) < 1  # the same image, up to H.264's loss
    assert min(change[3], change[8]) > 5


def test_the_video_is_tagged_bt709_as_it_is_encoded(pipe, clip, tmp_path):
    transform_video(pipe, clip, tmp_path / "out.mp4", audio=False, call=CALL)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frame = next(container.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (video_io.BT709, video_io.LIMITED_RANGE)


def test_frames_of_another_video_are_not_resumed_and_stale_frames_are_removed(pipe, clip, tmp_path):
    out = tmp_path / "frames"
    transform_video(pipe, clip, out, reuse_threshold=0, call=CALL)
    other = make_video(tmp_path / "other.mp4", pictures(5, seed=3))
    with pytest.raises(InputError, match="was made with source 'in.mp4', but this run uses"):
        transform_video(pipe, other, out, reuse_threshold=0, resume=True, call=CALL)
    report = transform_video(pipe, other, out, reuse_threshold=0, overwrite=True, call=CALL)
    assert report.frames == 5
    assert sorted(p.name for p in out.iterdir()) == [f"frame-{i:06d}.png" for i in range(1, 6)]
