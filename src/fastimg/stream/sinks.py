"""Where a stream's outputs go: a folder of frames, a video file, raw RGB frames on stdout, a
virtual camera (pyvirtualcam, the `fastimg[stream]` extra), and a log of which input frame
each output came from. (The live preview page is in .preview.)

Every sink takes `write(image, tag, skipped)` for each output, `tag` the input frame's
FrameTag (number and time), and `close()` at the end; each is checked when made, before any
engine loads, and refuses what cannot work in one line.
"""

import json
from fractions import Fraction
from pathlib import Path

from ..errors import InputError, OutputError, require
from ..media.labels import save_image
from .driver import SinkClosed

FRAME_NAME = "frame-{:06d}.png"  # numbered by the input frame it came from
DEFAULT_FPS = 30.0  # a stream whose source states no frame rate


def provenance(tag, skipped: bool) -> dict:
    """The labels that say which input frame an output came from."""
    return {
        "fastimg:input_frame": tag.index,
        "fastimg:input_time": f"{tag.time:.3f}",
        "fastimg:reused": skipped,
    }


class FolderSink:
    """One labelled PNG per output, named by its input frame: frame-000012.png came from input
    frame 12 (frames dropped leave gaps in the numbers)."""

    def __init__(self, folder: Path, metadata: bool = True, overwrite: bool = False):
        self.folder, self.metadata = Path(folder), metadata
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"-o {folder} is a file: name a folder, a video file or -")
        if not overwrite and self.folder.is_dir() and any(self.folder.glob("frame-*.png")):
            raise InputError(
                f"{folder} already holds frames: pass --overwrite to replace them, or name "
                "another folder"
            )

    def write(self, image, tag, skipped: bool) -> None:
        """Save the output as the input frame's PNG."""
        self.folder.mkdir(parents=True, exist_ok=True)
        labels = {**image.info, **provenance(tag, skipped)}
        save_image(image, self.folder / FRAME_NAME.format(tag.index), labels, "png",
                   metadata=self.metadata)  # fmt: skip

    def close(self) -> None:
        """Nothing is held open."""


class VideoFileSink:
    """A video file (.mp4, .mov, .mkv, .webm) written beside its name and renamed into place
    when the stream ends; each output is placed at its input frame's time, so that the video
    keeps the source's timing (a dropped frame holds the one before on screen)."""

    def __init__(self, path: Path, fps: float | None, source_name: str, metadata: bool = True,
                 overwrite: bool = False):  # fmt: skip
        from ..media.video_io import check_encoder, video_format

        self.path, self.metadata = Path(path), metadata
        if video_format(self.path) is None:
            raise InputError(f"-o {path} is not a video name (.mp4, .mov, .mkv, .webm)")
        check_encoder(self.path)
        if self.path.is_dir():
            raise InputError(f"-o {path} is a folder: name a video file")
        if self.path.exists() and not overwrite:
            raise InputError(f"{path} already exists: pass --overwrite to replace it")
        self.rate = Fraction(str(fps or DEFAULT_FPS)).limit_denominator(1001)
        self.source_name = source_name
        self.sink = None

    def write(self, image, tag, skipped: bool) -> None:
        """Encode the output at its input frame's time."""
        from ..media.video_io import Clip, Frame, VideoSink

        if self.sink is None:
            clip = Clip(Path(self.source_name), self.rate, Fraction(1, 1000), 0)
            labels = {**image.info, "fastimg:source": Path(self.source_name).name}
            self.sink = VideoSink(self.path, clip, labels, self.metadata)
        try:
            self.sink.write(Frame(tag.index, image, round(tag.time * 1000)), image)
        except OutputError:
            self.sink.abort()
            self.sink = False
            raise

    def close(self) -> None:
        """Complete the video (none when no output was written)."""
        if self.sink:
            try:
                self.sink.finish()
            except OutputError:
                self.sink.abort()
                raise


class StdoutSink:
    """Raw rgb24 frames on a binary stream (stdout), all of the first output's size, for a
    player: ffplay -f rawvideo -pixel_format rgb24 -video_size WxH -"""

    def __init__(self, stream=None):
        import sys

        self.stream = stream or sys.stdout.buffer
        self.size = None

    def write(self, image, tag, skipped: bool) -> None:
        """Write the output's pixels."""
        self.size = self.size or image.size
        if image.size != self.size:
            image = image.resize(self.size)
        try:
            self.stream.write(image.convert("RGB").tobytes())
            self.stream.flush()
        except BrokenPipeError:
            raise SinkClosed("stdout was closed (the player quit)") from None

    def close(self) -> None:
        """Flush what is left (a closed pipe is no error at the end)."""
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass


class VirtualCameraSink:
    """A virtual camera (pyvirtualcam: v4l2loopback on Linux, OBS's on Windows and macOS) that
    video-call apps can pick; opened at the first output's size."""

    def __init__(self, fps: float | None):
        self.pyvirtualcam = require("pyvirtualcam", "stream")
        self.fps = float(fps or DEFAULT_FPS)
        self.camera = None

    def write(self, image, tag, skipped: bool) -> None:
        """Send the output to the virtual camera."""
        import numpy as np

        if self.camera is None:
            width, height = image.size
            try:
                self.camera = self.pyvirtualcam.Camera(
                    width, height, self.fps, fmt=self.pyvirtualcam.PixelFormat.RGB
                )
            except RuntimeError as exc:
                reason = " ".join(str(exc).split())
                raise OutputError(
                    f"no virtual camera to send to: {reason} (Linux: load v4l2loopback; "
                    "Windows, macOS: install OBS and start its virtual camera once)"
                ) from None
        if image.size != (self.camera.width, self.camera.height):
            image = image.resize((self.camera.width, self.camera.height))
        self.camera.send(np.asarray(image.convert("RGB")))

    def close(self) -> None:
        """Release the virtual camera."""
        if self.camera is not None:
            self.camera.close()


class FrameLog:
    """One JSON line per output: its number, the input frame it came from and that frame's
    time, whether it was reused; for outputs that carry no labels (stdout, a virtual camera).
    Opened when made, so that a path that cannot be written is refused before any work."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(f"{path} already exists: pass --overwrite to replace it")
        try:
            self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        self.count = 0

    def write(self, image, tag, skipped: bool) -> None:
        """Log one output."""
        self.count += 1
        line = {"output": self.count, "input_frame": tag.index, "input_time": round(tag.time, 3),
                "reused": skipped}  # fmt: skip
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def close(self) -> None:
        """Close the log (removed where no output was made: the stream never ran)."""
        self.file.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)
