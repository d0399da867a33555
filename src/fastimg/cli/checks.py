"""The commands that check and measure: doctor (what runs here, and whether an engine folder
gives the right images on each backend) and bench (fastimg against diffusers and its peers)."""

import sys
from pathlib import Path

import click

from ..errors import InputError
from ..settings import BY_NAME, SAMPLERS
from .common import PathType, domain_errors, echo_err
from .options import click_type, stream_engine_given, stream_engine_options


@click.command()
@click.option(
    "--check",
    "check_engines",
    type=PathType(path_type=Path),
    default=None,
    help="Run every available backend on these engines against the CPU reference (with a "
    "mask for an inpainting UNet, and once more with control images where the folder has "
    "ControlNets).",
)
@click.option(
    "--device",
    type=click.IntRange(0),
    default=None,
    help="CUDA device index to check the GPU backends on [default: the current device].",
)
@domain_errors
def doctor(check_engines: Path | None, device: int | None) -> None:
    """Show what this machine offers fastimg; with --check, verify each backend's output."""
    from ..workflows import doctor as checkup

    report = checkup.machine_report()
    width = max(len(label) for label, _ in report) + 2
    for label, value in report:
        click.echo(f"{label:<{width}}{value}")
    if check_engines is None:
        return
    rows = checkup.check(check_engines, device=device, log=echo_err)
    click.echo(f"\ncheck against ONNX Runtime fp32 on the CPU ({check_engines}):")
    for row in rows:
        click.echo(f"  {checkup.row_label(row):<34}{row['status']:<9}{row['detail']}")
    bad = [r for r in rows if r["status"] in ("wrong", "failed")]
    if bad:
        raise click.ClickException(
            f"{len(bad)} check(s) gave wrong results or failed: "
            + "; ".join(map(checkup.row_label, bad))
        )


@click.command()
@click.option(
    "--model",
    default="tiny",
    show_default=True,
    help="Synthetic architecture (tiny, sd15, ...: built in models/NAME) or a diffusers "
    "folder, .safetensors file or hub id.",
)
@click.option("--engines", default=None, help="Engine folder of MODEL [default: engines/NAME].")
@click.option("--size", type=click.IntRange(64, 2048), default=512, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), default=4, show_default=True)
@click.option(
    "--strength", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True
)
@click.option("--guidance", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--sampler", type=click.Choice(SAMPLERS), default="ddim", show_default=True)
@click.option("--seed", type=click_type(BY_NAME["seed"]), default=0, show_default=True)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="backend:precision to measure, repeatable; openvino:fp32:static (or :auto) for "
    "OpenVINO's static shapes, onnxruntime-cuda:fp16:static for CUDA graphs [default: every "
    "one installed here, OpenVINO both ways].",
)
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--cold-start/--no-cold-start", default=True, show_default=True)
@click.option(
    "-o",
    "--out",
    type=PathType(path_type=Path),
    default=None,
    help="Writes OUT.json and OUT.png [default: bench/results/NAME-SIZE].",
)
@click.option("--save-images", is_flag=True, help="Also write each side's output image.")
@click.option(
    "--vae",
    default=None,
    help="A VAE folder or hub id both sides use in place of the model's own (taesd, "
    "taesdxl: a random-weight tiny autoencoder built in models/NAME).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Images per call (throughput, as a stream batch); speeds are per image.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="NAME[:PRECISION]=PYTHON",
    help="Also measure another runtime, run by its own interpreter, repeatable: "
    "optimum-intel=/path/to/venv/bin/python (its default precision; :fp32 or :bf16 to set "
    "one). bench/peers/README.md makes that environment.",
)
@click.option(
    "--controlnet",
    default=None,
    metavar="FOLDER_OR_ID",
    help="Measure img2img with a ControlNet on both sides: diffusers' "
    "StableDiffusionControlNetImg2ImgPipeline on the model's components against engines "
    "exported with it (the control image: the input's scribble). 'random' builds a "
    "random-weight ControlNet of the model's UNet in models/NAME-controlnet.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Measure the stream engine instead: frames per second, latency p50/p95/p99 and frames "
    "skipped over a clip made from the input image, beside diffusers frame by frame; with "
    "stream options, each backend also with every option off, for the options' own gain.",
)
@click.option(
    "--frames", type=click.IntRange(2), default=24, show_default=True, help="With --stream."
)
@stream_engine_options
@click.option(
    "--diffusers/--no-diffusers",
    default=True,
    show_default=True,
    help="With --stream: also run diffusers frame by frame.",
)
@domain_errors
def bench(
    model: str,
    engines: str | None,
    size: int,
    steps: int,
    guidance: float,
    strength: float,
    sampler: str,
    seed: int,
    backends: tuple[str, ...],
    warmup: int,
    repeats: int,
    cold_start: bool,
    out: Path | None,
    save_images: bool,
    vae: str | None,
    batch: int,
    peers: tuple[str, ...],
    controlnet: str | None,
    stream: bool,
    frames: int,
    diffusers: bool,
    **stream_options,
) -> None:
    """Time one img2img job in diffusers, in each fastimg backend and in each peer runtime
    (needs fastimg[bench])."""
    from ..errors import require

    require("torch", "bench")
    require("diffusers", "bench")
    from fastimg_bench import harness, report
    from fastimg_bench.job import BenchJob
    from fastimg_bench.models import model_and_engines
    from fastimg_bench.peers import check_interpreter, parse_peer

    from ..diffusion import schedules
    from ..engine_folder.manifest import load_manifest

    schedules.img2img_start(steps, strength)  # refuses a zero-step job before any loading
    peer_specs = [parse_peer(text) for text in peers]
    if peer_specs and vae is not None:
        raise InputError("a peer runs the model's own VAE: leave out --vae, or the --peer")
    if peer_specs and controlnet is not None:
        raise InputError("a peer runs no ControlNet: leave out --controlnet, or the --peer")
    for peer in peer_specs:  # a missing or broken interpreter is refused before any loading
        echo_err(f"checking the {peer.name} interpreter {peer.python}")
        check_interpreter(peer)
    specs = harness.check_backends(list(backends) or harness.default_backends())
    model_path, engines, vae, controlnet = model_and_engines(
        model, engines, vae, log=echo_err, controlnet=controlnet
    )
    # Again on the folder: which precisions its graphs have (engines exported in fp16).
    manifest = load_manifest(engines)
    specs = harness.check_backends(list(backends) or harness.default_backends(manifest), manifest)
    if stream:
        options = stream_engine_given(stream_options)
        job = BenchJob(size=size, steps=steps, strength=strength, guidance=guidance,
                       sampler=sampler, seed=seed, vae=vae)  # fmt: skip
        _stream_bench(model_path, engines, job, specs if backends else specs[:1], options, frames,
                      warmup, out, diffusers)  # fmt: skip
        return
    job = BenchJob(
        size=size,
        steps=steps,
        strength=strength,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
        batch=batch,
        vae=vae,
        controlnet=controlnet,
    )
    record = harness.run(
        model_path,
        engines,
        job,
        specs,
        warmup=warmup,
        repeats=repeats,
        cold_start=cold_start,
        log=echo_err,
        peers=peer_specs,
    )
    out = out or Path("bench/results") / (
        f"{Path(engines).name}-{size}" + (f"-batch{batch}" if batch > 1 else "")
    )  # (with --controlnet the engines' name says which)
    command = " ".join(["fastimg bench", *sys.argv[2:]])
    written = report.save(record, out, command, images=save_images)
    click.echo(report.table(record))
    for path in written:
        click.echo(f"wrote {path}")


def _stream_bench(model, engines, job, specs, options, frames, warmup, out, diffusers) -> None:
    """`fastimg bench --stream`: the stream engine's record, written to OUT.json."""
    import json

    from fastimg_bench import stream

    from ..atomic import write_atomically

    record = stream.run(model, engines, job, specs, options, frames, warmup, echo_err,
                        diffusers=diffusers)  # fmt: skip
    record["command"] = " ".join(["fastimg bench", *sys.argv[2:]])
    out = out or Path("bench/results") / f"stream-{Path(engines).name}-{job.size}"
    path = out.with_name(out.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(record, indent=2) + "\n").encode()
    write_atomically(path, lambda f: f.write(text))
    click.echo(stream.table(record))
    click.echo(f"wrote {path}")
