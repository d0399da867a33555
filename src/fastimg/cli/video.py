"""The video command: a video (or a folder of frames) redrawn frame by frame. A thin layer over
fastimg.workflows.video."""

import functools
import sys
from pathlib import Path

import click

from ..errors import InputError
from ..settings import DEFAULT_REUSE_THRESHOLD, from_fields
from .common import PathType, domain_errors, echo_err
from .options import (
    CONTROL_SETTINGS,
    apply_inpaint_area,
    control_list_options,
    engine_options,
    given_once,
    inpaint_options,
    mask_options,
    more_setting_options,
    pop_control_lists,
    pop_more_settings,
    prompt_options,
    scheduler_option,
    setting_option,
    stream_engine_given,
    stream_engine_options,
)

ONE_IMAGE_PER_FRAME = ("num_images_per_prompt",)  # (a video has one output frame per frame)


@click.command("video")
@click.argument("source", metavar="IN", type=PathType(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=PathType(path_type=Path),
    required=True,
    help="A video (.mp4, .mov, .mkv: H.264; .webm: VP9), or a folder for one PNG per frame.",
)
@functools.partial(prompt_options, help_prompt="What every frame should become.")
@setting_option(
    "strength",
    default=0.5,
    show_default=True,
    help="How much to change each frame, 0 < strength <= 1 (lower stays closer to the video).",
)
@setting_option(
    "num_inference_steps",
    show_default=True,
    help="Scheduled steps (strength x steps of them run per frame).",
)
@setting_option("guidance_scale", show_default=True)
@setting_option(
    "seed",
    default=0,
    show_default=True,
    help="The seed of every frame: one fixed seed gives every frame the same noise, so the "
    "noise does not flicker from frame to frame.",
)
@scheduler_option
@click.option(
    "--reuse-threshold",
    type=click.FloatRange(0, 1),
    default=DEFAULT_REUSE_THRESHOLD,
    show_default=True,
    help="A frame whose input differs from the last transformed one by less than this (mean "
    "absolute difference, pixels from 0 to 1) reuses its output, skipping the model; 0 "
    "transforms every frame. With --similarity, the similarity filter decides instead.",
)
@click.option(
    "--no-audio",
    is_flag=True,
    help="Leave the audio out (by default it is copied, or re-encoded where the container "
    "cannot take its codec).",
)
@click.option(
    "--fps",
    type=click.FloatRange(0, 1000, min_open=True),
    default=None,
    help="Frame rate of a video made from a folder of frames [default: 24]; a video IN "
    "keeps its own.",
)
@click.option(
    "--frames-dir",
    type=PathType(path_type=Path),
    default=None,
    help="Also keep each frame as a PNG in this folder, so that --resume can finish an "
    "interrupted video.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output (and existing frames, unless --resume).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Keep the frames already in the frame folder (-o DIR, or --frames-dir) and make "
    "only the missing ones.",
)
@click.option(
    "--no-metadata",
    is_flag=True,
    help="Write no prompt, settings or AI label into the video or the frames.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@mask_options("one mask FILE for every frame, or a DIR of masks matched to the frames in "
              "name order (one FILE with the stream options).", folders=True)  # fmt: skip
@stream_engine_options
@inpaint_options
@click.option(
    "--control-image",
    type=PathType(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="ControlNet: an image that steers every frame. Repeat it for several ControlNets, one "
    "each in their order; a ControlNet past them takes each frame, made by its "
    "--control-preprocess (canny and scribble of every frame: --control-preprocess canny "
    "--control-preprocess scribble).",
)
@more_setting_options(exclude=(*ONE_IMAGE_PER_FRAME, *CONTROL_SETTINGS))
@control_list_options
@engine_options
@domain_errors
def video(source, output, prompt, negative_prompt, strength, steps, guidance, seed, scheduler,
          reuse_threshold, no_audio, fps, frames_dir, overwrite, resume, no_metadata, quiet,
          mask, mask_invert, inpaint_area, keep_unmasked, control_image,
          **engine) -> None:  # fmt: skip
    """Redraw IN (a video file, or a folder of frame images) frame by frame toward --prompt.

    The output video keeps IN's frame rate, frame times and audio; a folder -o gets
    frame-000001.png on. An interrupted run leaves no partial video: keep the frames with
    --frames-dir (or -o a folder) and run again with --resume to finish it.
    """
    from ..diffusion.pipeline import Img2ImgPipeline
    from ..workflows import video as videos

    prompt, negative_prompt = (
        given_once(prompt, "--prompt"),
        given_once(negative_prompt, "--negative-prompt"),
    )

    stream = stream_engine_given(engine)
    more = pop_more_settings(engine, exclude=(*ONE_IMAGE_PER_FRAME, *CONTROL_SETTINGS))
    controls = pop_control_lists(engine)
    apply_inpaint_area(more, inpaint_area)
    where = dict(frames_dir=frames_dir, overwrite=overwrite, resume=resume, fps=fps)
    try:  # a run that cannot work is refused before the engines load
        total = videos.plan_video(source, output, **where).total
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    pipe = Img2ImgPipeline.from_engines(
        engine["engines"],
        backend=engine["backend"],
        precision=engine["precision"],
        device=engine["device"],
        shapes=engine["shapes"],
        loras=engine["loras"],
    )
    progress = videos.FrameProgress(total, stream=sys.stderr, mode="quiet" if quiet else "auto")
    given = {"prompt": prompt, "negative_prompt": negative_prompt, "strength": strength,
             "steps": steps, "guidance": guidance, "seed": seed, "sampler": scheduler,
             **more}  # fmt: skip
    call = from_fields(given, parse=False).with_values(**controls)
    if control_image:  # one per ControlNet, in their order
        paths = tuple(str(path) for path in control_image)
        call = call.with_values(control_image=paths[0] if len(paths) == 1 else paths)
    if mask is not None or mask_invert or keep_unmasked:
        call = call.with_values(mask_image=mask and str(mask), mask_invert=mask_invert,
                                keep_unmasked=keep_unmasked)  # fmt: skip
    report = videos.transform_video(
        pipe,
        source,
        output,
        call,
        reuse_threshold=reuse_threshold,
        audio=not no_audio,
        metadata=not no_metadata,
        progress=progress,
        stream=stream or None,
        **where,
    )
    click.echo(str(report.output))
    if not quiet:
        echo_err(
            f"{report.frames} frames in {report.seconds:.1f} s: {report.transformed} "
            f"transformed, {report.reused} reused (input nearly unchanged), {report.kept} kept "
            f"from an earlier run; audio: {report.audio}"
        )
