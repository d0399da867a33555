"""The batch commands: transform (files, folders, sweeps, variants, contact sheets), run (job
files) and inspect (what an image carries). Each is a thin layer over fastimg.workflows."""

import functools
import sys
from pathlib import Path

import click

from ..errors import InputError
from ..settings import SEED_LIMIT, from_fields
from .common import PathType, domain_errors, echo_err
from .options import (
    CONTROL_SETTINGS,
    apply_inpaint_area,
    c2pa_signer,
    check_ray_options,
    check_size,
    control_list_options,
    engine_options,
    given_once,
    inpaint_options,
    mask_options,
    more_setting_options,
    output_options,
    output_target,
    pop_control_lists,
    pop_more_settings,
    prompt_options,
    ray_options,
    scheduler_option,
    setting_option,
    sweep_option,
)


def _run(jobs, single: bool, settings: dict, grid: bool = False) -> None:
    """Name, check and run `jobs` with the shared options; print each output's path."""
    from ..diffusion.pipeline import Img2ImgPipeline
    from ..media.images import parse_size
    from ..workflows import runner
    from ..workflows.naming import check_outputs, name_outputs
    from ..workflows.progress import BatchProgress
    from ..workflows.sheets import check_sheets, plan_sheets, write_sheets

    resize = parse_size(settings["size"]) if settings["size"] is not None else None
    try:  # a plan that cannot work is a usage error, refused before anything loads
        jobs = name_outputs(
            jobs, settings["output"], settings["name"], settings["fmt"], single_file=single
        )
        planned = check_outputs(jobs, settings["overwrite"], settings["skip_existing"])
        sheets = plan_sheets(planned, settings["output"]) if grid else {}
        check_sheets(sheets, settings["overwrite"], settings["skip_existing"])
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    check_ray_options(settings)
    signer = c2pa_signer(settings["c2pa_cert"], settings["c2pa_key"], settings["no_metadata"])
    load_options = {
        "folder": settings["engines"],
        "backend": settings["backend"],
        "precision": settings["precision"],
        "device": settings["device"],
        # Asked for none: the backend's choice for one image size where the run has one.
        "shapes": settings["shapes"] or _default_shapes(planned.jobs, resize is not None),
        "loras": settings["loras"],
    }
    if settings["ray"]:
        run = _ray_runner(planned, load_options, resize, settings)
    else:
        pipe = Img2ImgPipeline.from_engines(**load_options)
        if resize is not None:
            check_size(resize, pipe.manifest, pipe.max_side)
        batch = runner.plan(pipe.manifest, planned)  # every job can run, before the first does
        run = functools.partial(runner.run, pipe, batch)
    mode = "quiet" if settings["quiet"] else "auto"
    progress = BatchProgress(len(planned.jobs), stream=sys.stderr, mode=mode)
    report = run(
        quality=settings["quality"],
        metadata=not settings["no_metadata"],
        extra_info={"fastimg:engines": str(settings["engines"])},
        resize=resize,
        max_pixels=settings["max_pixels"],
        progress=progress,
        on_written=lambda path: progress.aside(lambda: click.echo(str(path))),
        keep_images=bool(sheets),
        signer=signer,
    )
    metadata = not settings["no_metadata"]
    for path in write_sheets(sheets, report, metadata, signer):
        click.echo(str(path))
    if report.skipped:
        echo_err(f"kept {len(report.skipped)} output(s) already there (--skip-existing)")
    if report.failed:
        if settings["quiet"]:  # (otherwise the progress display named each as it failed)
            for job, reason in report.failed:
                echo_err(f"error: {job.label}: {reason}")
        failed = sum(job.image_count for job, _ in report.failed)
        total = sum(job.image_count for job in planned.jobs)
        raise click.ClickException(
            f"{failed} of {total} images failed (each is named above); the others are written"
        )


def _default_shapes(jobs, resized: bool) -> str | None:
    """None (the backend's choice for a run of one image size) where every call of `jobs` has
    the same shapes, else dynamic shapes (a compile per size would cost more than it saves)."""
    from ..workflows.jobs import one_image_size

    return None if one_image_size(jobs, resized) else "dynamic"


def _ray_runner(planned, load_options: dict, resize, settings: dict):
    """run_on_ray with the --ray options, once every job is checked on this machine (from
    the engines' manifest: no engines load here)."""
    from ..engine_folder.manifest import DEFAULT_MAX_SIDE, load_manifest
    from ..workflows import runner
    from ..workflows.ray_batch import run_on_ray

    manifest = load_manifest(load_options["folder"])
    if resize is not None:
        check_size(resize, manifest, manifest.max_side or DEFAULT_MAX_SIDE)
    return functools.partial(
        run_on_ray,
        runner.plan(manifest, planned),
        load_options,
        workers=settings["ray_workers"] or 2,
        cpus=settings["replica_cpus"],
        address=settings["ray_address"],
    )


@click.command()
@click.argument("images", nargs=-1, required=True, type=PathType(path_type=Path))
@prompt_options
@sweep_option("strength")
@sweep_option("num_inference_steps")
@sweep_option("guidance_scale")
@sweep_option("seed", " Random (one per input) if omitted.")
@click.option(
    "--variants",
    type=click.IntRange(1, 1000),
    default=None,
    help="N variants from N seeds: --seed and the N-1 after it (random if no --seed).",
)
@scheduler_option
@setting_option("num_images_per_prompt", show_default=True)
@click.option("--recursive", "-r", is_flag=True, help="Also take images in subfolders.")
@click.option(
    "--grid",
    is_flag=True,
    help="Also write a labelled contact sheet per input (STEM-grid.png) of the swept values.",
)
@click.option(
    "--control-image",
    type=PathType(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="ControlNet: the image that steers every output (resized to each input's size); "
    "the engines need a ControlNet (fastimg export --controlnet). Repeat it for several "
    "ControlNets, one image each in their order.",
)
@mask_options("resized to each input's size; needed by inpainting engines, taken by plain "
              "ones too.")  # fmt: skip
@inpaint_options
@more_setting_options(exclude=CONTROL_SETTINGS)
@control_list_options
@output_options
@engine_options
@ray_options
@domain_errors
def transform(images, prompt, negative_prompt, strength, steps, guidance, seed, variants,
              scheduler, num_images, recursive, grid, control_image, mask, mask_invert,
              inpaint_area: str, keep_unmasked: bool, **settings) -> None:  # fmt: skip
    """Transform IMAGES (files or folders) toward --prompt with the engines in --engines.

    Lists sweep: --strength 0.25,0.5,0.75 makes three images per input, named apart
    (photo-s0.25-42.png, ...); --variants 4 makes four seeds; --grid adds a contact sheet.

    The real-time recipe (README: Near real time) decodes with TAESD, the tiny VAE (export
    --vae madebyollin/taesd), not the model's own: on a 2-core AMD EPYC with AVX-512 BF16
    (OpenVINO bf16, a shared machine), 2026-12-05, its decoder took 2.9-6.0 s of a 1-step
    SD-Turbo 512 px call, where the SD VAE's decoder took 75-114 s at 512 px.
    """
    import secrets

    from ..workflows.jobs import Sweep, plan_sweep, variant_seeds
    from ..workflows.sources import collect_sources

    prompt, negative_prompt = (
        given_once(prompt, "--prompt"),
        given_once(negative_prompt, "--negative-prompt"),
    )
    more = pop_more_settings(settings, exclude=CONTROL_SETTINGS)
    apply_inpaint_area(more, inpaint_area)
    controls = pop_control_lists(settings)
    if settings["skip_existing"] and seed is None:
        raise click.UsageError(
            "--skip-existing needs --seed: random seeds give new names every run, so nothing "
            "would be found to skip"
        )
    if variants is not None:
        if seed is not None and len(seed) > 1:
            raise click.UsageError("--variants takes one --seed to count from, not a list")
        first = seed[0] if seed else secrets.randbelow(SEED_LIMIT)
        seed = variant_seeds(first, variants)
    single, settings["fmt"] = output_target(settings["output"], settings["fmt"])
    if grid and single:
        raise click.UsageError("--grid writes a contact sheet beside the outputs: -o a folder")
    sweep = Sweep(strength=strength, guidance=guidance, steps=steps, seeds=seed)
    sources = collect_sources(list(images), recursive=recursive, exclude=settings["output"])
    given = {"prompt": prompt, "negative_prompt": negative_prompt, "sampler": scheduler,
             "num_images": num_images, **more}  # fmt: skip
    try:
        call = from_fields(given, parse=False)
        if control_image:  # one per ControlNet, in their order
            paths = tuple(str(path) for path in control_image)
            call = call.with_values(control_image=paths[0] if len(paths) == 1 else paths)
        call = call.with_values(**controls)
        if mask is not None or mask_invert or keep_unmasked:
            call = call.with_values(mask_image=mask and str(mask), mask_invert=mask_invert,
                                    keep_unmasked=keep_unmasked)  # fmt: skip
        jobs = plan_sweep(sources, call, sweep)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    _run(jobs, single, settings, grid=grid)


@click.command("run")
@click.argument("jobs", type=PathType(path_type=Path))
@setting_option("prompt", help="Prompt of rows that have none.", multiple=True, default=None)
@setting_option(
    "negative_prompt", help="Negative prompt of rows that have none.", multiple=True, default=None
)
@setting_option("strength", help="For rows without  [default: 0.8]", default=None)
@setting_option("num_inference_steps", help="For rows without  [default: 50]", default=None)
@setting_option("guidance_scale", help="For rows without  [default: 7.5]", default=None)
@setting_option("seed", help="For rows without [default: random].")
@functools.partial(scheduler_option, help="For rows without one.")
@output_options
@engine_options
@ray_options
@domain_errors
def run_jobs(jobs, prompt, negative_prompt, strength, steps, guidance, seed, scheduler,
             **settings) -> None:  # fmt: skip
    """Run the jobs of a CSV (with a header row) or JSONL file.

    Columns: image, the settings (prompt, negative_prompt, strength, steps, guidance, seed,
    num_images, sampler, the SDXL ones, the ControlNet's, mask_blur, mask_padding,
    masked_content, lora_scales: NAME:SCALE,... of the --lora LoRAs), control_image and
    mask (paths, as image's), mask_invert and keep_unmasked (true/false); several ControlNets: one
    control_image and control_* value each, separated by ';' (a.png;b.png, 1.0;0.5),
    output (only image is required; the options fill what a row leaves empty). Every row is
    checked before the first image is made; outputs are named {row}-{stem}-s{strength}-{seed}
    unless a row's output column or --name says otherwise.
    """
    from ..workflows.jobfile import read_job_file

    single, settings["fmt"] = output_target(settings["output"], settings["fmt"])
    defaults = {
        "prompt": given_once(prompt, "--prompt"),
        "negative_prompt": given_once(negative_prompt, "--negative-prompt"),
        "strength": strength,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "sampler": scheduler,
    }
    planned = read_job_file(jobs, defaults)
    if settings["skip_existing"] and seed is None and any(j.call.seed is None for j in planned):
        raise click.UsageError(
            "--skip-existing needs a seed for every row (a seed column or --seed): random "
            "seeds give new names every run, so nothing would be found to skip"
        )
    _run(planned, single, settings)


@click.command("inspect")
@click.argument("images", nargs=-1, required=True, type=PathType(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per image.")
@domain_errors
def inspect_images(images: tuple[Path, ...], as_json: bool) -> None:
    """Print what IMAGES carry: generation parameters, the AI-generated label, C2PA."""
    import json

    from ..media.label_reader import read_labels

    for path in images:
        labels = read_labels(path)
        if labels.get("c2pa"):
            labels["c2pa_manifest"] = _c2pa_summary(path)
        if as_json:
            click.echo(json.dumps({"path": str(path), **labels}, ensure_ascii=False))
            continue
        width, height = labels["size"]
        click.echo(f"{path}: {labels['format']} {width}x{height}")
        source = labels.get("digital_source_type")
        click.echo(f"  AI-generated label (IPTC digital source type): {source or 'none'}")
        if labels.get("creator_tool"):
            click.echo(f"  made with: {labels['creator_tool']}")
        click.echo(f"  C2PA manifest: {_c2pa_line(labels.get('c2pa_manifest'), labels)}")
        text = labels.get("parameters")
        if text:
            click.echo("  parameters:")
            for line in text.splitlines():
                click.echo(f"    {line}")
        else:
            click.echo("  parameters: none")


def _c2pa_summary(path: Path) -> dict | str:
    """c2pa's own reading of an image's manifest, or why it could not be read."""
    from ..errors import FastImgError

    try:
        from ..media.c2pa import read_manifest

        return read_manifest(path) or "no active manifest"
    except FastImgError as exc:
        return f"cannot be read here: {exc}"


def _c2pa_line(summary, labels: dict) -> str:
    if not labels.get("c2pa"):
        return "none"
    if not isinstance(summary, dict):
        return f"present ({summary})"
    state = summary.get("validation_state")
    signer = summary.get("signer") or "an unnamed signer"
    failures = ", ".join(summary.get("failures") or []) or "none"
    return f"{state}, signed by {signer} (failures: {failures})"
