"""Video in and out, for the frame-by-frame workflows: a video file or a folder of frame images
opened as a stream of frames (and the audio's packets), and frames encoded into a video beside
its destination, renamed into place once whole.

Videos are read and written with PyAV (the `fastimg[video]` extra), imported only when used.
A folder of frames is read in natural name order (frame2 before frame10) at a given rate.
"""

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..atomic import public_mode
from ..errors import EngineError, InputError, OutputError, require
from .formats import RECOGNISED_SUFFIXES
from .images import load_image, looks_like_an_image
from .labels import parameters_text

log = logging.getLogger("fastimg")

# OUT's suffix: (FFmpeg muxer, video encoder, audio encoder for audio the muxer cannot copy).
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
}
ENCODER_OPTIONS = {
    "libx264": {"crf": "18"},  # visually lossless: the frames cost a diffusion run each
    "libvpx-vp9": {"crf": "30", "row-mt": "1"},  # constant quality (bit rate 0)
}
# Video suffixes fastimg reads but does not write (OUT with one is refused, not a folder).
OTHER_VIDEO_SUFFIXES = (".avi", ".gif", ".m4v", ".flv", ".wmv", ".ts", ".mpg", ".mpeg", ".ogv")
DEFAULT_FPS = Fraction(24)
# Frames are encoded as BT.709 limited-range YUV and tagged so (FFmpeg's AVColorSpace,
# AVColorPrimaries and AVColorTransferCharacteristic all number BT.709 1; AVColorRange: MPEG 1):
# untagged video is read as BT.601 by some players and BT.709 by others.
BT709, LIMITED_RANGE = 1, 1


def _av():
    """PyAV, or an error naming the extra that installs it."""
    return require("av", "video")


# --- reading -----------------------------------------------------------------------------------


@dataclass
class Frame:
    """One input frame: its number (from 1), its RGB pixels, and its time in the clip's
    time base (None: unknown)."""

    index: int
    image: object  # PIL.Image.Image
    pts: int | None


@dataclass
class Clip:
    """An opened input: frame rate, time base, frame count (an estimate; 0: unknown), and the
    audio stream kept (PyAV's, None for none); `frames_and_audio()` reads them."""

    path: Path
    rate: Fraction
    time_base: Fraction
    total: int
    audio: object | None = None
    container: object | None = None
    files: tuple[Path, ...] = ()

    def frames_and_audio(self) -> Iterator:
        """Frames, and the kept audio stream's packets, in the order the file holds them."""
        return _video_frames_and_audio(self) if self.container is not None else _folder_frames(self)

    def close(self) -> None:
        """Close the file (a frame folder has none open)."""
        if self.container is not None:
            self.container.close()


def open_clip(path: Path, fps: float | Fraction | None = None, audio: bool = True) -> Clip:
    """Open IN (a video file or a folder of frames); what cannot be read is refused here."""
    if path.is_dir():
        rate = frame_rate(fps)
        files = frame_files(path)
        return Clip(path, rate, 1 / rate, len(files), files=tuple(files))
    if not path.is_file():
        raise InputError(f"{path} does not exist (IN is a video file or a folder of frames)")
    if fps is not None:
        raise InputError(
            f"--fps is for a folder of frames: the video {path} keeps its own frame rate"
        )
    if looks_like_an_image(path):
        raise InputError(
            f"{path} is an image, not a video: transform it with fastimg transform, or pass a "
            "folder of frames"
        )
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(
            f"{path} cannot be read as a video: {_reason(exc)} (not a video file, or a "
            "truncated or damaged one)"
        ) from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream (an audio file?): pass a video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = Fraction(stream.average_rate or stream.guessed_rate or stream.base_rate or DEFAULT_FPS)
    time_base = Fraction(stream.time_base or 1 / rate)
    kept = container.streams.audio[0] if audio and container.streams.audio else None
    return Clip(path, rate, time_base, _frame_count(container, stream, rate), kept, container)


def frame_rate(fps: float | Fraction | None) -> Fraction:
    """`fps` as an exact fraction (29.97 -> 2997/100); DEFAULT_FPS when None."""
    if fps is None:
        return DEFAULT_FPS
    rate = Fraction(str(fps)) if isinstance(fps, float) else Fraction(fps)
    if not 0 < rate <= 1000:
        raise InputError(f"frame rate {fps} is not between 0 and 1000 frames per second")
    return rate


def frame_files(folder: Path) -> list[Path]:
    """A frame folder's image files (by content; hidden files left out) in natural name
    order: frame2 before frame10."""
    found, skipped = [], []
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.is_file():
            continue
        (found if looks_like_an_image(path) else skipped).append(path)
    if skipped:
        log.info("skipped %d file(s) in %s that are not images", len(skipped), folder)
    if not found:
        raise InputError(f"folder {folder} holds no frame images")
    return sorted(found, key=natural_key)


def natural_key(path: Path) -> tuple:
    """Sort key that reads runs of digits as numbers: frame2 < frame10."""
    parts = re.split(r"(\d+)", path.name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), path.name


def _frame_count(container, stream, rate: Fraction) -> int:
    """The frame count the file states, else one from its duration; 0 if it states neither."""
    if stream.frames:
        return stream.frames
    if stream.duration and stream.time_base:
        return round(stream.duration * stream.time_base * rate)
    if container.duration:
        return round(Fraction(container.duration, 1_000_000) * rate)
    return 0


def _video_frames_and_audio(clip: Clip) -> Iterator:
    """Decoded frames and the audio packets, one packet at a time (memory stays flat)."""
    av = _av()
    stream = clip.container.streams.video[0]
    streams = [stream] if clip.audio is None else [stream, clip.audio]
    index = 0
    try:
        for packet in clip.container.demux(streams):
            if packet.stream_index != stream.index:
                yield packet
                continue
            for frame in packet.decode():
                index += 1
                yield Frame(index, frame.to_image(), frame.pts)
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(
            f"frame {index + 1} of {clip.path} cannot be decoded: {_reason(exc)} (a truncated "
            "or damaged file?)"
        ) from None
    if index == 0:
        raise InputError(f"{clip.path} holds no video frame that can be decoded")


def _folder_frames(clip: Clip) -> Iterator[Frame]:
    """The folder's frames, loaded one at a time."""
    for index, path in enumerate(clip.files, 1):
        yield Frame(index, load_image(path), index - 1)


def _reason(exc: BaseException) -> str:
    """What went wrong, without FFmpeg's error number."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


# --- checking OUT ------------------------------------------------------------------------------


def video_format(dest: Path) -> tuple[str, str, str] | None:
    """(muxer, video encoder, audio encoder) for a video OUT; None for a frame folder."""
    suffix = dest.suffix.lower()
    if suffix in VIDEO_FORMATS:
        return VIDEO_FORMATS[suffix]
    if suffix in OTHER_VIDEO_SUFFIXES or suffix in RECOGNISED_SUFFIXES:
        kinds = ", ".join(VIDEO_FORMATS)
        raise InputError(
            f"-o {dest}: fastimg writes videos as {kinds}, or frames into a folder (a name "
            "without a video suffix)"
        )
    return None


def check_encoder(dest: Path) -> None:
    """Refuse OUT's suffix when this FFmpeg lacks its video encoder, naming suffixes that work."""
    av = _av()
    codec = VIDEO_FORMATS[dest.suffix.lower()][1]
    if _has_encoder(av, codec):
        return
    others = [s for s, (_, c, _) in VIDEO_FORMATS.items() if c != codec and _has_encoder(av, c)]
    instead = f": write {' or '.join(others)} instead" if others else ""
    raise EngineError(
        f"cannot write {dest}: the FFmpeg in PyAV has no {codec} encoder for "
        f"{dest.suffix.lower()}{instead}"
    )


def _has_encoder(av, codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except (av.codec.codec.UnknownCodecError, av.error.FFmpegError):
        return False
    return True


# --- writing -----------------------------------------------------------------------------------


class VideoSink:
    """Encodes frames into a temporary file beside `dest` with the clip's frame rate and time
    stamps, muxing its audio in; `finish` renames the file to `dest`, `abort` removes it.

    The file is opened at the first frame (its size sets the stream's); audio packets read
    before then wait in memory. Audio is copied where the container takes its codec, else
    re-encoded to the container's own audio codec, else dropped with a warning.
    """

    def __init__(self, dest: Path, clip: Clip, settings: dict, metadata: bool = True):
        self.dest, self.clip, self.settings, self.metadata = dest, clip, settings, metadata
        self.muxer, self.codec, self.audio_codec = VIDEO_FORMATS[dest.suffix.lower()]
        self.temp_path: Path | None = None
        self.temp_file = None
        self.container = None
        self.video_stream = None
        self.audio_stream = None
        self.copy_audio = False
        self.audio_note = "none"
        self.pending_audio: list = []
        self.last_pts: int | None = None
        self.frame_step = max(1, round(1 / (clip.rate * clip.time_base)))  # one frame, in time base

    def write(self, frame: Frame, image) -> None:
        """Encode `image` as `frame`'s output, at `frame`'s time."""
        av = _av()
        with self._writing():
            if self.container is None:
                self._open(image.size)
            out = av.VideoFrame.from_image(image).reformat(
                self.video_stream.width,
                self.video_stream.height,
                "yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
            )
            out.pts = self._pts(frame.pts)
            out.time_base = self.clip.time_base
            self.container.mux(self.video_stream.encode(out))

    def audio(self, packet) -> None:
        """Mux (copy or re-encode) one of the input's audio packets."""
        if self.container is None:
            self.pending_audio.append(packet)
            return
        with self._writing():
            self._mux_audio(packet)

    def finish(self) -> None:
        """Flush the encoders, close the file and rename it to `dest`."""
        with self._writing():
            if self.container is None:
                raise OutputError(f"no frame was written to {self.dest}")
            self.container.mux(self.video_stream.encode(None))
            if self.audio_stream is not None and not self.copy_audio:
                self.container.mux(self.audio_stream.encode(None))
            self.container.close()
            self.temp_file.close()
            public_mode(self.temp_path, like=self.dest)
            os.replace(self.temp_path, self.dest)

    def abort(self) -> None:
        """Remove the temporary file; `dest` stays as it was."""
        if self.temp_file is not None:
            with contextlib.suppress(Exception):
                self.temp_file.close()  # first, so that closing the container writes no trailer
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.close()
        if self.temp_path is not None:
            self.temp_path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _writing(self):
        """Errors of writing and encoding as OutputError naming `dest`."""
        av = _av()
        try:
            yield
        except (OSError, av.error.FFmpegError) as exc:
            raise OutputError(
                f"cannot write {self.dest}: {_reason(exc)} (the unfinished video was removed)"
            ) from None

    def _open(self, size: tuple[int, int]) -> None:
        av = _av()
        width, height = (side - side % 2 for side in size)  # yuv420p takes even sides
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.temp_path, self.temp_file = _part_file(self.dest)
        self.container = av.open(self.temp_file, "w", format=self.muxer)
        self.video_stream = self.container.add_stream(
            self.codec,
            rate=self.clip.rate,
            time_base=self.clip.time_base,  # the input's frame times, kept as they are
            width=width,
            height=height,
            options=dict(ENCODER_OPTIONS.get(self.codec, {})),
        )
        context = self.video_stream.codec_context
        context.pix_fmt = "yuv420p"
        context.colorspace = context.color_primaries = context.color_trc = BT709
        context.color_range = LIMITED_RANGE
        if self.clip.audio is not None:
            self._add_audio()
        if self.metadata:
            self.container.metadata["comment"] = parameters_text(self.settings, (width, height))
        pending, self.pending_audio = self.pending_audio, []
        for packet in pending:
            self._mux_audio(packet)

    def _pts(self, pts: int | None) -> int:
        """`pts`, or one frame after the last where it is missing or not increasing."""
        if pts is None or (self.last_pts is not None and pts <= self.last_pts):
            pts = 0 if self.last_pts is None else self.last_pts + self.frame_step
        self.last_pts = pts
        return pts

    def _add_audio(self) -> None:
        template = self.clip.audio
        name = template.codec_context.name if template.codec_context else "unknown"
        try:
            self.audio_stream = self.container.add_stream_from_template(template)
            self.copy_audio, self.audio_note = True, f"copied ({name})"
            return
        except ValueError:  # the container does not take this codec
            pass
        settings = _audio_settings(self.audio_codec, template)
        if settings is None:
            log.warning(
                "the audio (%s) cannot go into %s and cannot be re-encoded to %s here: the "
                "video is written without it",
                name,
                self.dest.suffix,
                self.audio_codec,
            )
            self.audio_note = f"dropped ({name} does not fit {self.dest.suffix})"
            return
        rate, layout, fmt = settings
        self.audio_stream = self.container.add_stream(self.audio_codec, rate=rate)
        self.audio_stream.layout, self.audio_stream.format = layout, fmt
        self.audio_note = f"re-encoded ({name} to {self.audio_stream.codec_context.name})"

    def _mux_audio(self, packet) -> None:
        if self.audio_stream is None:
            return
        if self.copy_audio:
            if packet.dts is None:  # the demuxer's empty packets that flush decoders
                return
            packet.stream = self.audio_stream
            self.container.mux(packet)
            return
        av = _av()
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            log.warning("an audio packet of %s cannot be decoded (%s): skipped",
                        self.clip.path, _reason(exc))  # fmt: skip
            return
        for frame in frames:
            self.container.mux(self.audio_stream.encode(frame))


def _audio_settings(codec: str, template) -> tuple[int, str, str] | None:
    """(sample rate, layout, sample format) that `codec` encodes `template`'s audio with,
    tried on a scratch encoder; None if this FFmpeg cannot (no encoder, no decoder)."""
    av = _av()
    if template.codec_context is None:
        return None
    try:
        encoder = av.codec.Codec(codec, "w")
        rates = encoder.audio_rates or ()
        rate = template.rate if not rates or template.rate in rates else max(rates)
        channels = template.layout.nb_channels
        layout = template.layout.name if channels <= 2 else "stereo"
        fmt = encoder.audio_formats[0].name if encoder.audio_formats else template.format.name
        scratch = av.CodecContext.create(codec, "w")
        scratch.sample_rate, scratch.layout, scratch.format = rate, layout, fmt
        scratch.open()
    except (ValueError, av.error.FFmpegError):
        return None
    return rate, layout, fmt


def _part_file(dest: Path):
    """A new private temporary file beside `dest`, open for writing: (its path, the file)."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    return Path(name), os.fdopen(fd, "wb")
