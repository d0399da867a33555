"""Videos redrawn frame by frame: decoded as a stream, each frame transformed with the same
prompt, settings and seed (the same noise on every frame), encoded at the input's frame rate
with its audio copied.

IN is a video file or a folder of frame images (natural name order: frame2 before frame10).
OUT is a video (.mp4, .mov, .mkv: H.264; .webm: VP9) or a folder that gets one labelled PNG per
frame, frame-000001.png on. A video is written to a temporary file beside OUT and renamed to
OUT once whole; any failure removes the temporary file, so OUT is never half-written. Runs
resume through frames kept as files (a folder OUT, or `frames_dir` beside a video OUT): with
`resume` the frames already there are kept and only the missing ones are made.

    call = CallSettings("a watercolor", strength=0.5, num_inference_steps=30, seed=0)
    report = transform_video(pipe, Path("in.mp4"), Path("out.mp4"), call)

A call's `mask_image` is one mask for every frame, or a folder of masks matched to the frames
in natural name order (the first mask for the first frame, ...).

`stream` (StreamDiffusion's options of fastimg.stream.engine: stream_batch, rcfg, similarity,
max_skip, feedback) runs the frames through one StreamEngine instead; its similarity filter
then takes the place of `reuse_threshold`.
"""

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..diffusion.masks import check_settings as check_mask
from ..errors import InputError
from ..media.images import load_image, resize_to
from ..media.labels import save_image
from ..media.video_io import Frame, VideoSink, check_encoder, frame_files, open_clip, video_format
from ..settings import DEFAULT_REUSE_THRESHOLD, SEED_LIMIT, CallSettings
from .jobs import Job, setting_labels
from .progress import BatchProgress
from .runner import CheckedJob, check_jobs, transform
from .sources import Source

log = logging.getLogger("fastimg")

# Mean absolute difference (pixels in [0, 1]) under which a frame reuses the last output: a
# static shot's compression noise stays under it, a cut or a moving subject does not.
FRAME_NAME = "frame-{:06d}.png"
FRAME_FILE = re.compile(r"frame-(\d{6,})\.png")
# The labels a kept frame must share with this run to be resumed into (fastimg:KEY).
RESUME_LABELS = ("source", "model_hash", "prompt", "negative_prompt", "seed", "strength",
                 "steps", "guidance", "scheduler")  # fmt: skip


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPlan:
    """What a video run reads and writes, checked before any work.

    `video_format` is None where OUT is a frame folder; `frames` is the folder frames are kept in
    (None: none), `existing` the frames there.
    """

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
    """The plan of a video run, refused before any work where it cannot work.

    Refused: an IN that cannot be read, an OUT that exists (without `overwrite`), frames already
    there (without `resume` or `overwrite`), a missing encoder.
    """
    source, dest = Path(source), Path(dest)
    frames_dir = None if frames_dir is None else Path(frames_dir)
    encoding = video_format(dest)
    if encoding is None:
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
    return VideoPlan(source, dest, encoding, frames, existing, clip.total)


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
    """What a video run did, frame by frame and as a whole.

    Frames read; of them, transformed, reused (input nearly the same as the last transformed one)
    and kept (already in the frame folder, `resume`); frames written to OUT this run; what became
    of the audio; seconds taken.
    """

    output: Path
    frames: int = 0
    transformed: int = 0
    reused: int = 0
    kept: int = 0
    written: int = 0
    audio: str = "none"
    seconds: float = 0.0


class FrameProgress(BatchProgress):
    """BatchProgress in frames (frames/s shown), counting reused frames as done.

    A reused frame is left out of the timing like a skipped one, so the ETA holds.
    """

    def __init__(self, total: int, **kwargs):
        super().__init__(total, unit="frame", **kwargs)

    def reuse(self, label: str) -> None:
        """Frame `label` reuses the last output (its input is nearly unchanged)."""
        self.skip(label, "reused (input nearly unchanged)")


def transform_video(
    pipe,
    source: Path,
    dest: Path,
    call: CallSettings,
    *,
    reuse_threshold: float = DEFAULT_REUSE_THRESHOLD,
    audio: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    fps: float | Fraction | None = None,
    frames_dir: Path | None = None,
    metadata: bool = True,
    progress: BatchProgress | None = None,
    callback: Callable | None = None,
    stream: dict | None = None,
) -> VideoReport:
    """Redraw every frame of `source` into `dest` with `call`'s settings and one seed.

    The seed is `call`'s, else a random one. A frame whose input differs from the last transformed
    one by less than `reuse_threshold` (mean absolute difference, pixels in [0, 1]; 0: never)
    reuses that output. `progress` is a (Frame)BatchProgress; by default a quiet one reporting to
    `callback`.
    """
    started = time.monotonic()
    source, dest = Path(source), Path(dest)
    plan = plan_video(source, dest, frames_dir=frames_dir, overwrite=overwrite, resume=resume,
                      fps=fps)  # fmt: skip
    if not 0 <= reuse_threshold <= 1:
        raise InputError(f"reuse threshold {reuse_threshold!r} is not between 0 and 1")
    seed = secrets.randbelow(SEED_LIMIT) if call.seed is None else call.seed
    # an empty negative prompt is none (SDXL then conditions on zeros, as diffusers does)
    call = call.with_values(seed=seed, negative_prompt=call.negative_prompt or None)
    engine = stream and _stream_engine(pipe, call, stream, resume, source)
    masks = _mask_files(pipe, call, plan.total)
    if masks:
        call = call.with_values(mask_image=str(masks[0]))
    checked = _check_call(pipe, source, call)
    labels = _labels(pipe, source, checked)
    kept = plan.existing if resume else {}
    if kept:
        for path in kept.values():  # each, as frames of another run may have been added
            _check_kept(path, labels)
    clip = open_clip(source, fps=fps, audio=audio and plan.video_format is not None)
    sink = VideoSink(dest, clip, labels, metadata) if plan.video_format else None
    if progress is None:
        progress = FrameProgress(clip.total, mode="quiet", callback=callback)
    report = VideoReport(dest)
    run = _FrameMaker(pipe, clip, plan, checked, labels, reuse_threshold, metadata, progress)
    run.masks = masks
    try:
        with progress:
            if engine:
                _stream_frames(engine, clip, sink, run, report)
            for item in () if engine else clip.frames_and_audio():
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


def _stream_engine(pipe, call: CallSettings, stream: dict, resume: bool, source: Path):
    """The StreamEngine of a run with StreamDiffusion's options, refused where the run asks
    for what it cannot do."""
    from ..stream.engine import StreamEngine, StreamSettings

    if resume:
        raise InputError(
            "the stream options (--stream-batch, --rcfg, --similarity, --feedback) run the "
            "whole video in one stream: leave out --resume, or the options"
        )
    mask = call.mask_image
    if isinstance(mask, str | Path) and Path(mask).is_dir():
        raise InputError(
            f"--mask {mask} is a folder, a mask per frame, but the stream options (--stream-batch"
            ", --rcfg, --similarity, --feedback) run one mask for every frame: pass one mask "
            "file, or leave out the options"
        )
    if call.vae_tile_size is not None:
        raise InputError(
            "the stream options (--stream-batch, --rcfg, --similarity, --feedback) decode the "
            "frames whole: leave out --vae-tile-size, or the options"
        )
    checked = _check_call(pipe, source, call)
    settings = StreamSettings.from_call(call, checked.sampler, **stream)
    return StreamEngine(pipe, settings)


def _stream_frames(engine, clip, sink, run: "_FrameMaker", report: VideoReport) -> None:
    """Every frame through the StreamEngine, written in order as its output comes out."""
    waiting: dict[int, Frame] = {}  # frames in flight (the stream batch), by index

    def write(out) -> None:
        item = waiting.pop(out.tag)
        path = None if run.plan.frames is None else run.plan.frames / FRAME_NAME.format(item.index)
        info = {**out.image.info, "fastimg:source": run.labels["fastimg:source"],
                "fastimg:frame": item.index}  # fmt: skip
        run._save(out.image, path, info, report)
        if out.skipped:
            report.reused += 1
            getattr(run.progress, "reuse", run.progress.skip)(str(path or f"frame {item.index}"))
        else:
            report.transformed += 1
            run.progress.finish(str(path or f"frame {item.index}"))
        if sink is not None:
            sink.write(item, out.image)
            report.written += 1

    for item in clip.frames_and_audio():
        if not isinstance(item, Frame):
            sink.audio(item)
            continue
        report.frames += 1
        run.progress.total = max(run.progress.total, item.index)
        waiting[item.index] = item
        run.progress.start(f"frame {item.index}", run.checked.steps)
        out = engine.push(item.image, item.index)
        if out is not None:
            write(out)
    for out in engine.flush():
        write(out)


def _mask_files(pipe, call: CallSettings, frames: int) -> list[Path]:
    """A mask folder's files, one a frame in name order, each checked ([] for one mask file
    or none); refused where there are fewer masks than frames."""
    folder = call.mask_image
    if not (isinstance(folder, str | Path) and Path(folder).is_dir()):
        return []
    found = frame_files(Path(folder))
    if len(found) < frames:
        raise InputError(
            f"the mask folder {folder} holds {len(found)} masks for {frames} frames: give one "
            "mask a frame (matched in name order), or one mask file for every frame"
        )
    for path in found[:frames]:
        check_mask(pipe.manifest, call.with_values(mask_image=str(path)))
    return found


def _check_call(pipe, source: Path, call: CallSettings) -> CheckedJob:
    """`call` checked against `pipe`'s engines (its sampler and UNet steps per frame); a
    prompt, sampler or strength-and-steps pair that cannot run is refused here, before any
    work."""
    if call.num_images_per_prompt != 1:
        raise InputError(
            f"a video takes one image per frame, not {call.num_images_per_prompt}: "
            "leave num_images_per_prompt at 1"
        )
    (checked,) = check_jobs(pipe.manifest, [Job(Source(source), call)])
    return checked


def _labels(pipe, source: Path, checked: CheckedJob) -> dict:
    """The run's labels: its settings (fastimg:*), the model's, and the input's name."""
    return {
        **setting_labels(checked.job.call, checked.sampler),
        **pipe.model_info,
        "fastimg:source": source.name,
    }


def _check_kept(path: Path, labels: dict) -> None:
    """Refuse to resume into frames made with other settings (as their labels say)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            recorded = dict(getattr(image, "text", {}))
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path} cannot be read ({exc}): delete it, or pass --overwrite without --resume"
        ) from None
    control = [k.removeprefix("fastimg:") for k in labels
               if k.startswith(("fastimg:control_", "fastimg:mask", "fastimg:keep_"))]  # fmt: skip
    for key in (*RESUME_LABELS, *control):  # (a ControlNet's or a mask's settings, if any)
        old, new = recorded.get(f"fastimg:{key}"), str(labels[f"fastimg:{key}"])
        if old is not None and old != new:
            raise InputError(
                f"{path} was made with {key} {old!r}, but this run uses {new!r}: resume with the "
                "same settings, pass --overwrite without --resume to make the frames again, or "
                "write to another folder"
            )


class _FrameMaker:
    """The per-frame decision: keep a frame already written, reuse the last output, or
    transform; transformed and reused frames are written to the frame folder, if any."""

    def __init__(self, pipe, clip, plan, checked, labels, threshold, metadata, progress):
        self.pipe, self.clip, self.plan, self.checked = pipe, clip, plan, checked
        self.labels, self.threshold, self.metadata = labels, threshold, metadata
        self.progress = progress
        self.size = None  # every input frame is brought to the first one's size
        self.last = None  # (input pixels, output image, its labels) of the last model run
        self.masks: list[Path] = []  # a mask folder's files, one a frame ([]: one mask or none)
        self.last_mask = None  # the mask of the last model run, from a mask folder

    def frame(self, item: Frame, kept: dict[int, Path], report: VideoReport):
        """The output image for `item`, made, reused or loaded."""
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
        mask = self._mask(item.index)
        if item.index in kept:
            output = load_image(kept[item.index])
            self.last = (pixels, output, {**self.labels, "fastimg:frame": item.index})
            self.last_mask = mask
            report.kept += 1
            self.progress.skip(str(path))
            return output
        same = self.last is not None and mask == self.last_mask
        if same and difference(pixels, self.last[0]) < self.threshold:
            output, labels = self.last[1], self.last[2]
            info = {**labels, "fastimg:frame": item.index,
                    "fastimg:reused_from": labels["fastimg:frame"]}  # fmt: skip
            self._save(output, path, info, report)
            report.reused += 1
            getattr(self.progress, "reuse", self.progress.skip)(str(path or label))
            return output
        self.progress.start(label, self.checked.steps)
        output = self._transform(image, mask)
        info = {**output.info, "fastimg:source": self.labels["fastimg:source"],
                "fastimg:frame": item.index}  # fmt: skip
        self._save(output, path, info, report)
        self.last, self.last_mask = (pixels, output, info), mask
        report.transformed += 1
        self.progress.finish(str(path or label))
        return output

    def _mask(self, index: int) -> Path | None:
        """Frame `index`'s mask from a mask folder (None: one mask for all, or none)."""
        if self.masks and index > len(self.masks):  # (a video longer than its header said)
            raise InputError(
                f"the mask folder holds {len(self.masks)} masks, but the video has more frames: "
                "give one mask a frame"
            )
        return self.masks[index - 1] if self.masks else None

    def _transform(self, image, mask: Path | None = None):
        """The model's output for one frame: the run's settings, its one seed, so the same noise
        on every frame (and its own mask, from a mask folder)."""
        checked, job = self.checked, self.checked.job
        if mask is not None:
            job = replace(job, call=job.call.with_values(mask_image=str(mask)))
        (output,) = transform(self.pipe, job, image, checked.sampler,
                              lambda step, total: self.progress.step(step))  # fmt: skip
        return output

    def _save(self, image, path: Path | None, info: dict, report: VideoReport) -> None:
        if path is not None:
            save_image(image, path, info, metadata=self.metadata)
            report.written += self.plan.video_format is None  # the frames are OUT


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, scaled to [0, 1] (1 if shapes differ)."""
    if a.shape != b.shape:
        return 1.0
    return float(np.abs(a.astype(np.int16) - b).mean()) / 255
