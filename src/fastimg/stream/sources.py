"""Where a stream's frames come from: a camera (through PyAV's capture formats: v4l2 on Linux,
avfoundation on macOS, dshow on Windows), a video file, a folder of frames, or raw RGB frames on
stdin.

Each source yields its frames in order as `InputFrame`s (numbered from 1, with their time in
seconds from the first frame on the source's own clock), and a frame it cannot decode as a
`BrokenFrame`, so that the stream reports it and goes on. A file or a folder is not live: the
driver plays it at its frame rate (or as fast as the engine goes, `every_frame`).

    source = open_source("/dev/video0", size=(640, 480))
    for frame in source.frames(): ...
"""

import contextlib
import platform
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..errors import FastImgError, InputError, require
from ..media.images import load_image, looks_like_an_image

DEFAULT_FPS = Fraction(24)  # a folder of frames, or raw frames, played without --fps
MAC_CAMERA_FPS = "30"  # avfoundation refuses FFmpeg's own default (29.97) on most cameras
MAC_DEVICE = re.compile(r"\d+(:(\d+|none))?")  # avfoundation's VIDEO[:AUDIO] by number
LIST_CAMERAS = {
    "v4l2": "ls /dev/video*  (or v4l2-ctl --list-devices)",
    "avfoundation": 'ffmpeg -f avfoundation -list_devices true -i ""',
    "dshow": "ffmpeg -list_devices true -f dshow -i dummy",
}


@dataclass(frozen=True)
class InputFrame:
    """One input frame: its number (from 1), its RGB pixels and its time in seconds from the
    first frame."""

    index: int
    image: object  # PIL.Image.Image
    time: float


@dataclass(frozen=True)
class BrokenFrame:
    """A frame the source could not decode, and why."""

    index: int
    reason: str


@dataclass(frozen=True)
class CameraSpec:
    """How PyAV opens a camera: the device as FFmpeg names it, the capture format, options."""

    device: str
    format: str
    options: dict = field(default_factory=dict)


def camera_spec(
    source: str,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    system: str | None = None,
) -> CameraSpec | None:
    """The camera that SOURCE names on `system` (platform.system()'s name), None if it names no
    camera: /dev/videoN (Linux), a camera number N (Linux, macOS; avfoundation:NAME by name),
    video=NAME (Windows)."""
    system = system or platform.system()
    options = {}
    if size is not None:
        options["video_size"] = f"{size[0]}x{size[1]}"
    if fps is not None:
        options["framerate"] = f"{fps:g}"
    if system == "Linux":
        if source.isdigit():
            return CameraSpec(f"/dev/video{int(source)}", "v4l2", options)
        if source.startswith("/dev/video"):
            return CameraSpec(source, "v4l2", options)
    elif system == "Darwin":
        if MAC_DEVICE.fullmatch(source) or source.startswith("avfoundation:"):
            options.setdefault("framerate", MAC_CAMERA_FPS)
            return CameraSpec(source.removeprefix("avfoundation:"), "avfoundation", options)
    elif system == "Windows":
        if source.startswith("video="):
            return CameraSpec(source, "dshow", options)
        if source.isdigit():
            raise InputError(
                f"camera {source}: on Windows a camera is named, as video=NAME (list them with  "
                f"{LIST_CAMERAS['dshow']})"
            )
    return None


def open_source(
    source: str,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    stdin=None,
    system: str | None = None,
):
    """The source SOURCE names, opened (a camera, a video) or checked (a folder); what cannot be
    read is refused here, in one line. `size` is the size of raw frames on stdin (needed there)
    or the capture size asked of a camera; `fps` the rate of a folder, of raw frames, or asked
    of a camera."""
    if source == "-":
        if size is None:
            raise InputError("raw frames on stdin (-) need their size: pass --size WIDTHxHEIGHT")
        import sys

        # the unbuffered file: a reader thread blocked in it holds no lock at the exit
        stdin = stdin or getattr(sys.stdin.buffer, "raw", sys.stdin.buffer)
        return RawSource(stdin, size, fps)
    camera = camera_spec(source, size, fps, system)
    if camera is not None:
        return CameraSource(camera)
    path = Path(source)
    if size is not None and path.exists():
        raise InputError(f"--size is for raw frames on stdin or a camera: {path} has its own")
    if path.is_dir():
        return FolderSource(path, fps)
    if path.is_file():
        if fps is not None:
            raise InputError(f"--fps is for a folder of frames or raw frames: {path} has its own")
        return VideoSource(path)
    raise InputError(
        f"{source} does not exist: SOURCE is a camera (/dev/video0, 0, video=NAME), a video "
        "file, a folder of frames, or - for raw frames on stdin"
    )


class RawSource:
    """Raw rgb24 frames of one size read from a binary stream (stdin); a short read at the end is
    a broken frame. Frames are timed at `fps`, else by when they arrive."""

    live = True

    def __init__(self, stream, size: tuple[int, int], fps: float | None = None):
        self.stream, self.size, self.name = stream, size, "stdin"
        self.rate = None if fps is None else Fraction(str(fps))

    def frames(self) -> Iterator[InputFrame | BrokenFrame]:
        """The frames, until the stream ends."""
        from PIL import Image

        width, height = self.size
        length, index, start = width * height * 3, 0, time.monotonic()
        while True:
            data = _read_exactly(self.stream, length)
            if not data:
                return
            index += 1
            if len(data) < length:
                yield BrokenFrame(
                    index,
                    f"stdin ended mid-frame: {len(data)} of the {length} bytes of a {width}x"
                    f"{height} rgb24 frame (is --size the size of the frames sent?)",
                )
                return
            when = (index - 1) / self.rate if self.rate else time.monotonic() - start
            yield InputFrame(index, Image.frombytes("RGB", self.size, data), float(when))


def _read_exactly(stream, length: int) -> bytes:
    """Up to `length` bytes: fewer only where the stream ends."""
    parts, got = [], 0
    while got < length:
        part = stream.read(length - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class FolderSource:
    """A folder's frame images in natural name order (frame2 before frame10), at `fps`; a file
    that cannot be decoded is a broken frame."""

    live = False

    def __init__(self, folder: Path, fps: float | None = None):
        from ..media.video_io import frame_files

        self.folder, self.name = folder, str(folder)
        self.rate = DEFAULT_FPS if fps is None else Fraction(str(fps))
        self.files = frame_files(folder)

    def frames(self) -> Iterator[InputFrame | BrokenFrame]:
        """The frames, loaded one at a time."""
        for index, path in enumerate(self.files, 1):
            try:
                image = load_image(path)
            except FastImgError as exc:
                yield BrokenFrame(index, str(exc))
                continue
            yield InputFrame(index, image, float((index - 1) / self.rate))


class _Decoded:
    """Frames decoded from a PyAV container opened on first use (a file or a camera)."""

    stated = 0  # the frame count a file states (0: none, or a camera)

    def open(self):
        raise NotImplementedError

    def frames(self) -> Iterator[InputFrame | BrokenFrame]:
        """The decoded frames; a packet that cannot be decoded is a broken frame, a read error
        ends them with one."""
        av = require("av", "video")
        container = self.open()
        try:
            stream = container.streams.video[0]
            packets, index, first = container.demux(stream), 0, None
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    if index < self.stated:
                        yield BrokenFrame(index + 1, f"the video ends here, after {index} of "
                                                     f"the {self.stated} frames it states "
                                                     "(truncated?)")  # fmt: skip
                    return
                except (av.error.FFmpegError, OSError) as exc:
                    yield BrokenFrame(index + 1, f"{self.name} cannot be read on: {_reason(exc)}")
                    return
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    index += 1
                    yield BrokenFrame(index, f"it cannot be decoded: {_reason(exc)}")
                    continue
                for frame in decoded:
                    index += 1
                    when = frame.time
                    when = (index - 1) / float(self.rate) if when is None else float(when)
                    first = when if first is None else first
                    yield InputFrame(index, frame.to_image(), when - first)
        finally:
            with contextlib.suppress(Exception):
                container.close()


class VideoSource(_Decoded):
    """A video file, decoded frame by frame at its own frame times."""

    live = False

    def __init__(self, path: Path):
        self.path, self.name = path, str(path)
        if looks_like_an_image(path):
            raise InputError(
                f"{path} is an image, not a video: pass a folder of frames, or transform it with "
                "fastimg transform"
            )
        container = self.open()
        stream = container.streams.video[0]
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
        self.stated = stream.frames or 0
        container.close()

    def open(self):
        av = require("av", "video")
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            raise InputError(
                f"{self.path} cannot be read as a video: {_reason(exc)} (not a video file, or a "
                "damaged one)"
            ) from None
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.path} has no video stream: pass a video")
        return container


class CameraSource(_Decoded):
    """A camera, opened through PyAV with its capture format (checked on opening)."""

    live = True

    def __init__(self, spec: CameraSpec):
        self.spec, self.name = spec, f"camera {spec.device}"
        if spec.format == "v4l2" and not Path(spec.device).exists():
            raise InputError(
                f"camera {spec.device} does not exist: plug one in, or pick another (list them "
                f"with  {LIST_CAMERAS['v4l2']})"
            )
        self.container = self._open()
        stream = self.container.streams.video[0]
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)

    def open(self):
        container, self.container = self.container, None
        return container or self._open()

    def _open(self):
        av = require("av", "video")
        spec = self.spec
        try:
            container = av.open(spec.device, format=spec.format, options=dict(spec.options))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise InputError(
                f"camera {spec.device} ({spec.format}) cannot be opened: {_reason(exc)} (in use "
                f"by another program, or no such camera: list them with  "
                f"{LIST_CAMERAS.get(spec.format, 'ffmpeg -devices')})"
            ) from None
        if not container.streams.video:
            container.close()
            raise InputError(f"camera {spec.device} gives no video")
        return container


def _reason(exc: BaseException) -> str:
    """What went wrong, in one line, without FFmpeg's error number."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    reason = " ".join(str(reason).split())
    return reason[:1].lower() + reason[1:]
