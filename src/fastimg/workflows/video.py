"""Videos redrawn frame by frame: decoded as a stream, each frame transformed with the same
prompt, settings and seed (the same noise on every frame), encoded at the input's frame rate
with its audio copied.

IN is a video file or a folder of frame images (natural name order: frame2 before frame10).
OUT is a video (.mp4, .mov, .mkv: H.264; .webm: VP9) or a folder that gets one labelled PNG per
frame, frame-000001.png on. A video is written to a temporary file beside OUT and renamed to
OUT once whole; any failure removes the temporary file, so OUT is never half-written. Runs
resume through frames kept as files (a folder OUT, or `frames_dir` beside a video OUT): with
`resume` the frames already there are kept and only the missing ones are made.

    report = transform_video(pipe, Path("in.mp4"), Path("out.mp4"), prompt="a watercolor",
                             strength=0.5, steps=30, guidance=7.5, seed=0)
"""

import contextlib
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..atomic import public_mode
from ..errors import EngineError, InputError, OutputError, require
from ..settings import SEED_LIMIT
from .progress import BatchProgress

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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = Fraction(24)
# Mean absolute difference (pixels in [0, 1]) under which a frame reuses the last output: a
# static shot's compression noise stays under it, a cut or a moving subject does not.
DEFAULT_REUSE_THRESHOLD = 0.01
FRAME_NAME = "frame-{:06d}.png"
FRAME_FILE = re.compile(r"frame-(\d{6,})\.png")
# Frames are encoded as BT.709 limited-range YUV and tagged so (FFmpeg's AVColorSpace,
# AVColorPrimaries and AVColorTransferCharacteristic all number BT.709 1; AVColorRange: MPEG 1):
# untagged video is read as BT.601 by some players and BT.709 by others.
BT709, LIMITED_RANGE = 1, 1
SETTINGS_CHECKED = ("source", "model_hash", "prompt", "negative_prompt", "seed", "strength",
                    "steps", "guidance", "scheduler")  # fmt: skip


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
    audio stream kept (PyAV's, None for none); `items()` reads frames and audio packets."""

    path: Path
    rate: Fraction
    time_base: Fraction
    total: int
    audio: object | None = None
    container: object | None = None
    files: tuple[Path, ...] = ()

    def items(self) -> Iterator:
        """Frames, and the kept audio stream's packets, in the order the file holds them."""
        return _video_items(self) if self.container is not None else _folder_items(self)

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
    from ..media.images import looks_like_an_image

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
    from ..media.images import looks_like_an_image

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


def _video_items(clip: Clip) -> Iterator:
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


def _folder_items(clip: Clip) -> Iterator[Frame]:
    """The folder's frames, loaded one at a time."""
    from ..media.images import load_image

    for index, path in enumerate(clip.files, 1):
        yield Frame(index, load_image(path), index - 1)


def _reason(exc: BaseException) -> str:
    """What went wrong, without FFmpeg's error number."""
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPlan:
    """What a run reads and writes, checked before any work: OUT's video format (None: OUT is
    a frame folder), the folder frames are kept in (None: none), and the frames there."""

    source: Path
    dest: Path
    video_format: tuple[str, str, str] | None
    frames: Path | None
    existing: dict[int, Path]
    total: int


def plan_video(
    source: Path,
    dest: Path,
    *,
    frames_dir: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    fps: float | Fraction | None = None,
) -> VideoPlan:
    """Refuse, before any work, an IN that cannot be read, an OUT that exists (without
    `overwrite`), frames already there (without `resume` or `overwrite`), a missing encoder."""
    source, dest = Path(source), Path(dest)
    frames_dir = None if frames_dir is None else Path(frames_dir)
    video_format = output_format(dest)
    if video_format is None:
        if frames_dir is not None:
            raise InputError(
                f"-o {dest} is a folder of frames already: --frames-dir is for a video output"
            )
        frames = dest
    else:
        frames = frames_dir
        check_encoder(dest)
        if dest.is_dir():
            raise InputError(f"-o {dest} is a folder: name a video file, or another folder")
        if dest.exists() and not overwrite:
            raise InputError(
                f"{dest} already exists: pass --overwrite to replace it (it is kept until the "
                "new video is whole)"
            )
    if resume and frames is None:
        raise InputError(
            "--resume needs the finished frames kept as files: -o a folder, or keep them "
            "beside the video with --frames-dir DIR (an unfinished video file is never kept)"
        )
    existing = {}
    if frames is not None:
        if frames.exists() and not frames.is_dir():
            raise InputError(f"{frames} is a file, not a folder for the frames")
        existing = existing_frames(frames)
        if existing and not (resume or overwrite):
            first = existing[min(existing)]
            raise InputError(
                f"{frames} already holds frames ({first.name}, {len(existing)} in all): pass "
                "--resume to keep them and make only the missing ones, or --overwrite to make "
                "them again"
            )
    _check_apart(source, dest, frames)
    clip = open_clip(source, fps=fps, audio=False)
    clip.close()
    return VideoPlan(source, dest, video_format, frames, existing, clip.total)


def output_format(dest: Path) -> tuple[str, str, str] | None:
    """(muxer, video encoder, audio encoder) for a video OUT; None for a frame folder."""
    suffix = dest.suffix.lower()
    if suffix in VIDEO_FORMATS:
        return VIDEO_FORMATS[suffix]
    if suffix in OTHER_VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES:
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


def existing_frames(folder: Path) -> dict[int, Path]:
    """The frame files (frame-000001.png, ...) already in `folder`, by frame number."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = FRAME_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def _check_apart(source: Path, dest: Path, frames: Path | None) -> None:
    """Refuse an OUT (or frame folder) that is IN itself."""
    where = source.resolve()
    for target in (dest, frames):
        if target is not None and target.resolve() == where:
            raise InputError(f"{target} is the input: write the output somewhere else")


# --- running -----------------------------------------------------------------------------------


@dataclass
class VideoReport:
    """What a run did: frames read; of them, transformed, reused (input nearly the same as the
    last transformed one) and kept (already in the frame folder, `resume`); frames written to
    OUT this run; what became of the audio; seconds taken."""

    output: Path
    frames: int = 0
    transformed: int = 0
    reused: int = 0
    kept: int = 0
    written: int = 0
    audio: str = "none"
    seconds: float = 0.0


class FrameProgress(BatchProgress):
    """BatchProgress in frames (frames/s shown); a reused frame counts as done, left out of
    the timing like a skipped one, so the ETA holds."""

    def __init__(self, total: int, **kwargs):
        super().__init__(total, unit="frame", **kwargs)

    def reuse(self, label: str) -> None:
        """Frame `label` reuses the last output (its input is nearly unchanged)."""
        self.skip(label, "reused (input nearly unchanged)")


def transform_video(
    pipe,
    source: Path,
    dest: Path,
    *,
    prompt: str,
    negative_prompt: str | None = None,
    strength: float = 0.5,
    steps: int = 50,
    guidance: float = 7.5,
    seed: int | None = 0,
    sampler: str | None = None,
    reuse_threshold: float = DEFAULT_REUSE_THRESHOLD,
    audio: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    fps: float | Fraction | None = None,
    frames_dir: Path | None = None,
    metadata: bool = True,
    progress: BatchProgress | None = None,
    callback: Callable | None = None,
) -> VideoReport:
    """Redraw every frame of `source` toward `prompt` with one seed, into `dest`.

    A frame whose input differs from the last transformed one by less than `reuse_threshold`
    (mean absolute difference, pixels in [0, 1]; 0: never) reuses that output. `progress` is
    a (Frame)BatchProgress; by default a quiet one reporting to `callback`.
    """
    started = time.monotonic()
    source, dest = Path(source), Path(dest)
    plan = plan_video(source, dest, frames_dir=frames_dir, overwrite=overwrite, resume=resume,
                      fps=fps)  # fmt: skip
    if not 0 <= reuse_threshold <= 1:
        raise InputError(f"reuse threshold {reuse_threshold!r} is not between 0 and 1")
    seed = secrets.randbelow(SEED_LIMIT) if seed is None else seed
    settings, run_steps = _settings(pipe, source, prompt, negative_prompt, strength, steps,
                                    guidance, seed, sampler)  # fmt: skip
    kept = plan.existing if resume else {}
    if kept:
        for path in kept.values():  # each, as frames of another run may have been added
            _check_kept(path, settings)
    clip = open_clip(source, fps=fps, audio=audio and plan.video_format is not None)
    sink = VideoSink(dest, clip, settings, metadata) if plan.video_format else None
    if progress is None:
        progress = FrameProgress(clip.total, mode="quiet", callback=callback)
    report = VideoReport(dest)
    run = _Run(pipe, clip, plan, settings, run_steps, reuse_threshold, metadata, progress)
    try:
        with progress:
            for item in clip.items():
                if not isinstance(item, Frame):
                    sink.audio(item)
                    continue
                image = run.frame(item, kept, report)
                if sink is not None:
                    sink.write(item, image)
                    report.written += 1
            progress.total = report.frames
        if sink is not None:
            sink.finish()
            report.audio = sink.audio_note if audio else "left out"
        if overwrite and not resume:  # frames of a longer earlier run are not this video's
            for index, path in plan.existing.items():
                if index > report.frames:
                    path.unlink(missing_ok=True)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        clip.close()
    report.seconds = time.monotonic() - started
    return report


def _settings(pipe, source, prompt, negative_prompt, strength, steps, guidance, seed, sampler):
    """The run's labels (fastimg:* settings) and its UNet steps per frame; a prompt, sampler or
    strength-and-steps pair that cannot run is refused here, before any work."""
    from .batch import Job, check_jobs
    from .sources import Source

    job = Job(Source(source), prompt, negative_prompt, strength, steps, guidance, seed, sampler)
    ((sampler, run_steps),) = check_jobs(pipe.manifest, [job])
    settings = {
        "fastimg:prompt": prompt,
        "fastimg:negative_prompt": negative_prompt or "",
        "fastimg:seed": seed,
        "fastimg:strength": float(strength),
        "fastimg:steps": steps,
        "fastimg:guidance": float(guidance),
        "fastimg:scheduler": sampler,
        **pipe.model_info,
        "fastimg:source": source.name,
    }
    return settings, run_steps


def _check_kept(path: Path, settings: dict) -> None:
    """Refuse to resume into frames made with other settings (as their labels say)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            labels = dict(getattr(image, "text", {}))
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path} cannot be read ({exc}): delete it, or pass --overwrite without --resume"
        ) from None
    for key in SETTINGS_CHECKED:
        old, new = labels.get(f"fastimg:{key}"), str(settings[f"fastimg:{key}"])
        if old is not None and old != new:
            raise InputError(
                f"{path} was made with {key} {old!r}, but this run uses {new!r}: resume with the "
                "same settings, pass --overwrite without --resume to make the frames again, or "
                "write to another folder"
            )


class _Run:
    """The per-frame decision: keep a frame already written, reuse the last output, or
    transform; transformed and reused frames are written to the frame folder, if any."""

    def __init__(self, pipe, clip, plan, settings, run_steps, threshold, metadata, progress):
        self.pipe, self.clip, self.plan, self.settings = pipe, clip, plan, settings
        self.run_steps, self.threshold, self.metadata = run_steps, threshold, metadata
        self.progress = progress
        self.size = None  # every input frame is brought to the first one's size
        self.last = None  # (input pixels, output image, its labels) of the last model run

    def frame(self, item: Frame, kept: dict[int, Path], report: VideoReport):
        """The output image for `item`, made, reused or loaded."""
        from ..media.images import load_image, resize_to

        report.frames += 1
        self.progress.total = max(self.progress.total, item.index)
        image = item.image
        if self.size not in (None, image.size):
            image = resize_to(image, self.size)
        self.size = image.size
        pixels = np.asarray(image)
        folder = self.plan.frames
        path = None if folder is None else folder / FRAME_NAME.format(item.index)
        label = f"frame {item.index}"
        if item.index in kept:
            output = load_image(kept[item.index])
            self.last = (pixels, output, {**self.settings, "fastimg:frame": item.index})
            report.kept += 1
            self.progress.skip(str(path))
            return output
        if self.last is not None and difference(pixels, self.last[0]) < self.threshold:
            output, labels = self.last[1], self.last[2]
            info = {**labels, "fastimg:frame": item.index,
                    "fastimg:reused_from": labels["fastimg:frame"]}  # fmt: skip
            self._save(output, path, info, report)
            report.reused += 1
            getattr(self.progress, "reuse", self.progress.skip)(str(path or label))
            return output
        self.progress.start(label, self.run_steps)
        output = self._transform(image)
        info = {**output.info, "fastimg:source": self.settings["fastimg:source"],
                "fastimg:frame": item.index}  # fmt: skip
        self._save(output, path, info, report)
        self.last = (pixels, output, info)
        report.transformed += 1
        self.progress.finish(str(path or label))
        return output

    def _transform(self, image):
        s = self.settings
        (output,) = self.pipe(
            s["fastimg:prompt"],
            image,
            strength=s["fastimg:strength"],
            num_inference_steps=s["fastimg:steps"],
            guidance_scale=s["fastimg:guidance"],
            negative_prompt=s["fastimg:negative_prompt"] or None,
            seed=s["fastimg:seed"],  # the same seed, so the same noise, on every frame
            scheduler=s["fastimg:scheduler"],
            callback=lambda step, total: self.progress.step(step),
        )
        return output

    def _save(self, image, path: Path | None, info: dict, report: VideoReport) -> None:
        from ..media.labels import save_image

        if path is not None:
            save_image(image, path, info, metadata=self.metadata)
            report.written += self.plan.video_format is None  # the frames are OUT


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, scaled to [0, 1] (1 if shapes differ)."""
    if a.shape != b.shape:
        return 1.0
    return float(np.abs(a.astype(np.int16) - b).mean()) / 255


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
        self.part: Path | None = None
        self.file = None
        self.container = None
        self.video = None
        self.audio_out = None
        self.copy_audio = False
        self.audio_note = "none"
        self.pending: list = []
        self.last_pts: int | None = None
        self.step = max(1, round(1 / (clip.rate * clip.time_base)))  # one frame, in time base

    def write(self, frame: Frame, image) -> None:
        """Encode `image` as `frame`'s output, at `frame`'s time."""
        av = _av()
        with self._writing():
            if self.container is None:
                self._open(image.size)
            out = av.VideoFrame.from_image(image).reformat(
                self.video.width,
                self.video.height,
                "yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
            )
            out.pts = self._pts(frame.pts)
            out.time_base = self.clip.time_base
            self.container.mux(self.video.encode(out))

    def audio(self, packet) -> None:
        """Mux (copy or re-encode) one of the input's audio packets."""
        if self.container is None:
            self.pending.append(packet)
            return
        with self._writing():
            self._mux_audio(packet)

    def finish(self) -> None:
        """Flush the encoders, close the file and rename it to `dest`."""
        with self._writing():
            if self.container is None:
                raise OutputError(f"no frame was written to {self.dest}")
            self.container.mux(self.video.encode(None))
            if self.audio_out is not None and not self.copy_audio:
                self.container.mux(self.audio_out.encode(None))
            self.container.close()
            self.file.close()
            public_mode(self.part, like=self.dest)
            os.replace(self.part, self.dest)

    def abort(self) -> None:
        """Remove the temporary file; `dest` stays as it was."""
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()  # first, so that closing the container writes no trailer
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.close()
        if self.part is not None:
            self.part.unlink(missing_ok=True)

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
        self.part, self.file = _part_file(self.dest)
        self.container = av.open(self.file, "w", format=self.muxer)
        self.video = self.container.add_stream(
            self.codec,
            rate=self.clip.rate,
            time_base=self.clip.time_base,  # the input's frame times, kept as they are
            width=width,
            height=height,
            options=dict(ENCODER_OPTIONS.get(self.codec, {})),
        )
        context = self.video.codec_context
        context.pix_fmt = "yuv420p"
        context.colorspace = context.color_primaries = context.color_trc = BT709
        context.color_range = LIMITED_RANGE
        if self.clip.audio is not None:
            self._add_audio()
        if self.metadata:
            from ..media.labels import parameters_text

            self.container.metadata["comment"] = parameters_text(self.settings, (width, height))
        pending, self.pending = self.pending, []
        for packet in pending:
            self._mux_audio(packet)

    def _pts(self, pts: int | None) -> int:
        """`pts`, or one frame after the last where it is missing or not increasing."""
        if pts is None or (self.last_pts is not None and pts <= self.last_pts):
            pts = 0 if self.last_pts is None else self.last_pts + self.step
        self.last_pts = pts
        return pts

    def _add_audio(self) -> None:
        template = self.clip.audio
        name = template.codec_context.name if template.codec_context else "unknown"
        try:
            self.audio_out = self.container.add_stream_from_template(template)
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
        self.audio_out = self.container.add_stream(self.audio_codec, rate=rate)
        self.audio_out.layout, self.audio_out.format = layout, fmt
        self.audio_note = f"re-encoded ({name} to {self.audio_out.codec_context.name})"

    def _mux_audio(self, packet) -> None:
        if self.audio_out is None:
            return
        if self.copy_audio:
            if packet.dts is None:  # the demuxer's empty packets that flush decoders
                return
            packet.stream = self.audio_out
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
            self.container.mux(self.audio_out.encode(frame))


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
