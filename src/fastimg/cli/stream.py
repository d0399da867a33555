"""The stream command: a camera, a video, a frame folder or raw frames on stdin redrawn in real
time into files, a video, stdout, a virtual camera or a live preview page. A thin layer over
fastimg.stream."""

import functools
import re
import sys
from pathlib import Path

import click

from ..errors import FastImgError
from .common import PathType, domain_errors, echo_err
from .options import (
    control_list_options,
    engine_options,
    given_once,
    keep_unmasked_option,
    mask_options,
    pop_control_lists,
    prompt_options,
    scheduler_option,
    setting_option,
    stream_engine_given,
    stream_engine_options,
)


class Size(click.ParamType):
    """WIDTHxHEIGHT: 640x480."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", str(value))
        if match is None or 0 in (sides := tuple(int(side) for side in match.groups())):
            self.fail(f"{value!r} is not WIDTHxHEIGHT (like 640x480)", param, ctx)
        return sides


@click.command("stream")
@click.argument("source", metavar="SOURCE")
@click.option(
    "-o",
    "--output",
    "outputs",
    multiple=True,
    help="Where outputs go, repeatable: a folder (frame-000012.png came from input frame 12), "
    "a video (.mp4, .mov, .mkv, .webm), or - for raw frames on stdout: rgb24, 3 bytes a pixel, "
    "rows top to bottom, every frame the first output's size (its WxH is printed on stderr), "
    "for  | ffplay -f rawvideo -pixel_format rgb24 -video_size WxH -",
)
@click.option(
    "--virtual-camera",
    is_flag=True,
    help="Send the outputs to a virtual camera that video-call apps can pick (pyvirtualcam: "
    "pip install 'fastimg[stream]'; v4l2loopback on Linux, OBS's on Windows and macOS).",
)
@click.option(
    "--preview",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Show the outputs live at http://127.0.0.1:PORT/ (an MJPEG stream; 0 picks a free "
    "port, printed on stderr).",
)
@click.option(
    "--frame-log",
    type=PathType(path_type=Path),
    default=None,
    help="Write one JSON line per output: the input frame it came from (number, time).",
)
@functools.partial(prompt_options, required=False, help_prompt="What every frame should become.")
@click.option(
    "--prompt-file",
    type=PathType(path_type=Path, dir_okay=False),
    default=None,
    help="Read the prompt from this text file instead of --prompt, and again whenever the file "
    "changes while the stream runs: the new prompt applies from the next frame, encoded once, "
    "without a reload or a warm-up (edit it, or echo 'a watercolor' > FILE).",
)
@setting_option("strength", default=0.5, show_default=True)
@setting_option("num_inference_steps", default=2, show_default=True)
@setting_option("guidance_scale", default=0.0, show_default=True)
@setting_option("seed", default=0, show_default=True, help="The seed of every frame.")
@scheduler_option
@click.option(
    "--size",
    type=Size(),
    default=None,
    help="The size of raw frames on stdin (needed with -), or the capture size asked of a camera.",
)
@click.option(
    "--fps",
    type=click.FloatRange(0, 1000, min_open=True),
    default=None,
    help="The frame rate of a folder or raw frames [default: 24; raw frames without it are "
    "timed as they arrive], or asked of a camera.",
)
@click.option(
    "--resize",
    type=Size(),
    default=None,
    help="Transform frames at this size [default: the first frame's, rounded as the pipeline "
    "does].",
)
@stream_engine_options
@click.option(
    "--every-frame",
    is_flag=True,
    help="Transform every frame, waiting for the engine, instead of dropping the frames that "
    "come while it is busy (a file or a folder is then read as fast as the engine goes).",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds without a frame from the source after which the stream ends.",
)
@click.option(
    "--max-frames",
    type=click.IntRange(1),
    default=None,
    help="End after this many frames read from the source.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--no-metadata", is_flag=True, help="Write no prompt, settings or AI label into the outputs."
)
@click.option("--quiet", "-q", is_flag=True, help="Report only errors.")
@click.option(
    "--control-image",
    type=PathType(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="ControlNet: an image that steers every frame (read once). Repeat it for several "
    "ControlNets, one each in their order; a ControlNet past them takes each frame, made by its "
    "--control-preprocess (canny edges of every frame: --control-preprocess canny).",
)
@control_list_options
@mask_options("one mask FILE for every frame (resized to the stream's size; read once).")
@setting_option("mask_blur")
@keep_unmasked_option
@engine_options
@domain_errors
def stream(source, outputs, virtual_camera, preview, frame_log, prompt, negative_prompt,
           prompt_file, strength, steps, guidance, seed, scheduler, size, fps, resize,
           every_frame, stall_timeout, max_frames, overwrite, no_metadata, quiet, control_image,
           mask, mask_invert, mask_blur, keep_unmasked, **engine) -> None:  # fmt: skip
    """Redraw SOURCE's frames toward --prompt in real time, until it ends or Ctrl-C.

    With --prompt-file FILE instead, the prompt is FILE's text, followed while the stream runs:
    save a new prompt into FILE and it applies from the next frame.

    SOURCE is a camera (Linux: /dev/video0 or 0; macOS: 0; Windows: video=NAME), a video
    file, a folder of frames, or - for raw rgb24 frames on stdin (--size WxH). Frames that come
    while the engine is busy are dropped (--every-frame waits instead); a broken frame is
    reported and skipped; a source silent for --stall-timeout seconds ends the stream.
    """
    from ..diffusion.pipeline import Img2ImgPipeline
    from ..media.images import load_image
    from ..stream.driver import run_stream
    from ..stream.engine import StreamEngine, StreamSettings
    from ..stream.live import LivePrompt, PromptFile
    from ..stream.sources import open_source

    prompt, negative_prompt = (
        given_once(prompt, "--prompt"),
        given_once(negative_prompt, "--negative-prompt"),
    )
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError(
            "give the prompt as --prompt TEXT or --prompt-file FILE (re-read when it changes), "
            "one of them"
        )
    if prompt_file is not None:
        prompt_file = PromptFile(prompt_file)
        prompt = prompt_file.read()
    if not (outputs or virtual_camera or preview is not None or frame_log):
        raise click.UsageError(
            "the stream has no output: pass -o FOLDER, -o VIDEO.mp4, -o -, --virtual-camera or "
            "--preview PORT"
        )
    if list(outputs).count("-") > 1:
        raise click.UsageError("-o - was given twice: stdout takes one stream")
    if source != "-" and any(
        out != "-" and Path(out).resolve() == Path(source).resolve() for out in outputs
    ):
        raise click.UsageError(f"-o {source} is SOURCE itself: write the outputs somewhere else")
    if "-" in outputs and _stdout_is_a_terminal():
        raise click.UsageError(
            "-o - writes raw frames, not for a terminal: pipe them into a player (| ffplay -f "
            "rawvideo -pixel_format rgb24 -video_size WxH -)"
        )
    control = pop_control_lists(engine)
    if control_image:  # read once, one per ControlNet in their order
        loaded = tuple(load_image(path) for path in control_image)
        control["control_image"] = loaded[0] if len(loaded) == 1 else loaded
    shaping = {"mask_invert": mask_invert, "mask_blur": mask_blur, "keep_unmasked": keep_unmasked}
    masking = {"mask_image": str(mask), **shaping} if mask else None  # (checked, read once)
    if not mask and any(shaping.values()):
        given = [f"--{name.replace('_', '-')}" for name, value in shaping.items() if value]
        raise click.UsageError(
            f"{', '.join(given)} shape a mask, but no --mask was given: pass --mask FILE "
            "(white repaints, black keeps), or leave them out"
        )
    settings = StreamSettings(
        prompt=prompt,
        negative_prompt=negative_prompt or "",
        strength=strength,
        steps=steps,
        guidance=guidance,
        sampler=scheduler,
        seed=seed,
        width=resize and resize[0],
        height=resize and resize[1],
        **stream_engine_given(engine),
        control=control or None,
        mask=masking,
    )
    frames = open_source(source, size=size, fps=fps)  # refused before the engines load
    sinks = []
    try:
        sinks = _sinks(outputs, virtual_camera, preview, frame_log, frames, no_metadata, overwrite)
        pipe = Img2ImgPipeline.from_engines(
            engine["engines"],
            backend=engine["backend"],
            precision=engine["precision"],
            device=engine["device"],
            shapes=engine["shapes"],
            loras=engine["loras"],
        )
        stream_engine = StreamEngine(pipe, settings)
        if prompt_file is not None:
            stream_engine = LivePrompt(stream_engine, prompt_file, echo_err)
        if not quiet:
            echo_err(f"streaming {frames.name}: Ctrl-C ends the stream")
    except BaseException:  # (Ctrl-C while the engines load too): the outputs are let go
        for sink in sinks:
            sink.close()
        raise
    report = run_stream(
        frames,
        stream_engine,
        sinks,
        stall_timeout=stall_timeout,
        every_frame=every_frame,
        max_frames=max_frames,
        report=echo_err,
        status=None if quiet else echo_err,
    )
    if not quiet:
        echo_err(report.summary())
    if report.error is not None:
        raise click.ClickException(report.error)


def _sinks(outputs, virtual_camera, preview, frame_log, frames, no_metadata, overwrite) -> list:
    """The outputs asked for, each checked (and the preview serving) before the engines load."""
    from ..media.video_io import VIDEO_FORMATS
    from ..stream import sinks

    made = []
    try:
        for output in outputs:
            if output == "-":
                made.append(_StdoutSize(sinks.StdoutSink()))
            elif Path(output).suffix.lower() in VIDEO_FORMATS:
                fps = float(frames.rate) if frames.rate else None
                made.append(sinks.VideoFileSink(Path(output), fps, frames.name,
                                                not no_metadata, overwrite))  # fmt: skip
            else:
                made.append(sinks.FolderSink(Path(output), not no_metadata, overwrite))
        if virtual_camera:
            made.append(sinks.VirtualCameraSink(float(frames.rate) if frames.rate else None))
        if preview is not None:
            from ..stream.preview import PreviewSink

            made.append(PreviewSink(preview))
            echo_err(f"preview: {made[-1].url}")
        if frame_log is not None:
            made.append(sinks.FrameLog(frame_log, overwrite))
    except FastImgError:
        for sink in made:
            sink.close()
        raise
    return made


def _stdout_is_a_terminal() -> bool:
    return sys.stdout.isatty()


class _StdoutSize:
    """The stdout sink, saying on stderr the size of its frames at the first one (a player
    needs it)."""

    def __init__(self, sink):
        self.sink = sink

    def write(self, image, tag, skipped: bool) -> None:
        if self.sink.size is None:
            width, height = image.size
            echo_err(f"stdout: rgb24 frames of {width}x{height}")
        self.sink.write(image, tag, skipped)

    def close(self) -> None:
        self.sink.close()
