"""The fastimg command line. Heavy imports live inside the commands so --help stays instant."""

import logging
import sys
from pathlib import Path

import click

from ..diffusion.schedules import SAMPLERS
from ..errors import InputError
from ..media.images import EXAMPLE_IMAGE
from .batch import inspect_images, run_jobs, transform
from .common import domain_errors, echo_err
from .serve import serve
from .video import video

# export/random_models.py defines them: pipelines, standalone VAEs, LoRA files
ARCHITECTURES = (
    *("tiny", "tiny-v", "tiny-lcm", "tiny-turbo", "sd15", "lcm", "sd2-v", "sd-turbo"),
    *("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sdxl-turbo", "sdxl", "sdxl-refiner", "sdxl-turbo"),
    *("taesd", "taesdxl"),
    *("tiny-lora", "sd15-lora", "tiny-sdxl-lora"),
)


_domain_errors, _echo_err = domain_errors, echo_err


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _echo_err(f"{record.levelname.lower()}: {record.getMessage()}")


@click.group()
@click.version_option(package_name="fastimg")
def cli() -> None:
    """fastimg: fast, reproducible Stable Diffusion img2img.

    Export a diffusers model once (fastimg export), then transform images with the engines
    (fastimg transform). fastimg quickstart runs the whole path offline on a tiny model.
    """
    logger = logging.getLogger("fastimg")
    if not logger.handlers:
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


@cli.command("make-model")
@click.argument("arch", type=click.Choice(ARCHITECTURES))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder (a .safetensors file for a LoRA).",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@_domain_errors
def make_model(arch: str, output: Path, seed: int) -> None:
    """Write a random-weight pipeline, VAE or LoRA of a real architecture (fastimg[export])."""
    from ..errors import require

    require("torch", "export")
    from fastimg_export.random_models import write_random_model

    _echo_err(f"building random-weight {arch} pipeline")
    write_random_model(arch, output, seed=seed)
    click.echo(f"model written to {output}")


@cli.command("export")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Engine folder to create.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Weights and compute precision of the ONNX graphs.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing engine folder.")
@click.option(
    "--vae",
    default=None,
    help="A VAE folder or hub id to use in place of the model's own, e.g. TAESD "
    "(madebyollin/taesd; madebyollin/taesdxl for SDXL) for a tiny, fast autoencoder.",
)
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="FILE_OR_ID[:SCALE]",
    help="Fuse a LoRA into the weights before export, at SCALE (default 1); repeatable. "
    "SD 1.5 + latent-consistency/lcm-lora-sdv1-5 + --scheduler lcm runs in 4 steps.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write an int8 UNet for OpenVINO (--precision int8 at run time), quantized "
    "with NNCF on calibration images; its error is recorded (needs fastimg[int8]).",
)
@click.option(
    "--int8-images",
    type=click.IntRange(2, 64),
    default=4,
    show_default=True,
    help="Calibration images for --int8 (one is held out to measure the error).",
)
@_domain_errors
def export(
    model: str,
    output: Path,
    precision: str,
    overwrite: bool,
    vae: str | None,
    loras: tuple[str, ...],
    int8: bool,
    int8_images: int,
) -> None:
    """Export MODEL (diffusers folder, .safetensors file or hub id) to verified ONNX engines."""
    from ..errors import require

    require("torch", "export")
    require("diffusers", "export")
    from fastimg_export.engine_writer import export_engines

    export_engines(
        model,
        output,
        precision=precision,
        overwrite=overwrite,
        log=_echo_err,
        vae=vae,
        loras=list(loras),
        int8_images=int8_images if int8 else 0,
    )
    click.echo(f"engines written to {output}")


@cli.command()
@click.argument("engines", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Re-hash every file against the manifest (SHA-256).")
@_domain_errors
def info(engines: Path, verify: bool) -> None:
    """Show what an engine folder's manifest says."""
    from ..diffusion.schedules import default_sampler
    from ..engine_folder.layout import FORMAT
    from ..engine_folder.manifest import load_manifest

    manifest = load_manifest(engines, full_check=verify)
    sched = manifest.scheduler
    lines = [
        f"engine folder   {manifest.folder}",
        f"format          {FORMAT} v{manifest.format_version} ({manifest.kind})",
        f"model           {manifest.model_family} from {manifest.source}",
        f"created         {manifest.created}",
        f"precision       {manifest.precision}",
        f"image multiple  {manifest.vae_scale_factor} px",
        f"VAE             {manifest.vae_kind} from {manifest.vae_source}, scaling "
        f"{manifest.vae_scaling_factor}",
        f"scheduler       {sched.get('_class_name')} ({sched.get('prediction_type', 'epsilon')}, "
        f"{sched.get('timestep_spacing', 'default')} spacing) -> sampler "
        f"{default_sampler(sched) or 'ddim (no equivalent)'}",
        "components:",
    ]
    for name, entry in manifest.components.items():
        size = sum(f["bytes"] for f in entry["files"].values()) / 1e6
        parity = entry.get("parity", {})
        lines.append(
            f"  {name:<13} {entry['path']:<26} {size:9.1f} MB  vs torch: rel "
            f"{parity.get('max_rel_error', float('nan')):.2e} (limit {parity.get('tolerance')})"
        )
        for side in ("inputs", "outputs"):
            io = ", ".join(
                f"{k} {v['dtype']}[{','.join(map(str, v['shape']))}]"
                for k, v in entry[side].items()
            )
            lines.append(f"      {side:<8} {io}")
        for backend, variant in entry.get("variants", {}).items():
            line = f"      {backend:<14} {variant['path']}"
            if "quantization" in variant:
                q, error = variant["quantization"], variant["quantization"]["error"]
                line += (
                    f"  {q['method']}: output relative RMS error "
                    f"{error['output_relative_rms_error']:.3g}, {error['layers']} layers "
                    f"(median {error['median_relative_rms_error']:.3g}, "
                    f"worst {error['max_relative_rms_error']:.3g})"
                )
            lines.append(line)
    for lora in manifest.loras:
        lines.append(
            f"lora            {lora.name} at scale {lora.scale:g} "
            f"(SHA-256 {lora.sha256[:16]}..., {lora.source})"
        )
    tools = ", ".join(f"{k} {v}" for k, v in manifest.tools.items())
    lines.append(f"tools           {tools}")
    for key, plans in manifest.plan_sets.items():
        lines.append(
            f"tensorrt        {key}: TensorRT {plans['tensorrt']}, compute capability "
            f"{plans['compute_capability']}, {plans['precision']} (VAE {plans['vae_precision']})"
        )
    if verify:
        lines.append(
            f"verified        SHA-256 of all {len(manifest.verified)} files fastimg opens match"
        )
    click.echo("\n".join(lines))


@cli.command()
@click.argument("engines", type=click.Path(path_type=Path))
@click.option("--height", default="512", show_default=True, help="N, MIN-MAX or MIN:OPT:MAX px.")
@click.option("--width", default="512", show_default=True, help="N, MIN-MAX or MIN:OPT:MAX px.")
@click.option("--batch", default="1", show_default=True, help="Images per call: N or MIN-MAX.")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True)
@click.option(
    "--vae-precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="SD's VAE overflows in fp16; keep fp32 unless your VAE is fp16-safe.",
)
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True)
@click.option("--rebuild", is_flag=True, help="Build again even if these engines exist.")
@click.option(
    "--device",
    type=click.IntRange(0),
    default=None,
    help="CUDA device to build for [default: the current device].",
)
@_domain_errors
def build(
    engines: Path,
    height: str,
    width: str,
    batch: str,
    precision: str,
    vae_precision: str,
    opt_level: int,
    rebuild: bool,
    device: int | None,
) -> None:
    """Build TensorRT engines for this GPU from ENGINES' ONNX (needs fastimg[tensorrt])."""
    from ..engine_folder.manifest import load_manifest
    from ..engine_folder.profiles import Profile, parse_range
    from ..errors import require

    factor = load_manifest(engines).vae_scale_factor
    profile = Profile(
        height=parse_range(height, factor, "--height"),
        width=parse_range(width, factor, "--width"),
        batch=parse_range(batch, 1, "--batch"),
    )
    require("tensorrt", "tensorrt")
    require("onnx", "export")
    from fastimg_export.trt_build import build_engines

    key = build_engines(
        engines,
        profile,
        precision=precision,
        vae_precision=vae_precision,
        opt_level=opt_level,
        rebuild=rebuild,
        log=_echo_err,
        device=device,
    )
    click.echo(f"TensorRT engines {key} ready in {engines / 'tensorrt' / key}")


@cli.command()
@click.option(
    "--check",
    "check_engines",
    type=click.Path(path_type=Path),
    default=None,
    help="Run every available backend on these engines against the CPU reference.",
)
@click.option(
    "--device",
    type=click.IntRange(0),
    default=None,
    help="CUDA device index to check the GPU backends on [default: the current device].",
)
@_domain_errors
def doctor(check_engines: Path | None, device: int | None) -> None:
    """Show what this machine offers fastimg; with --check, verify each backend's output."""
    from ..workflows import doctor as checkup

    report = checkup.machine_report()
    width = max(len(label) for label, _ in report) + 2
    for label, value in report:
        click.echo(f"{label:<{width}}{value}")
    if check_engines is None:
        return
    rows = checkup.check(check_engines, device=device, log=_echo_err)
    click.echo(f"\ncheck against ONNX Runtime fp32 on the CPU ({check_engines}):")
    for row in rows:
        click.echo(
            f"  {row['backend'] + ' ' + row['precision']:<26}{row['status']:<9}{row['detail']}"
        )
    bad = [r for r in rows if r["status"] in ("wrong", "failed")]
    if bad:
        raise click.ClickException(
            f"{len(bad)} backend(s) gave wrong results or failed: "
            + ", ".join(f"{r['backend']} {r['precision']}" for r in bad)
        )


@cli.command()
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
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="backend:precision to measure, repeatable; openvino:fp32:static (or :auto) for "
    "OpenVINO's static shapes [default: every one installed here, OpenVINO both ways].",
)
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--cold-start/--no-cold-start", default=True, show_default=True)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
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
@_domain_errors
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
) -> None:
    """Time one img2img job in diffusers, in each fastimg backend and in each peer runtime
    (needs fastimg[bench])."""
    from ..errors import require

    require("torch", "bench")
    require("diffusers", "bench")
    from fastimg_bench import harness, report
    from fastimg_bench.job import Job
    from fastimg_bench.models import model_and_engines
    from fastimg_bench.peers import check_interpreter, parse_peer

    from ..diffusion import schedules

    schedules.img2img_start(steps, strength)  # refuses a zero-step job before any loading
    peer_specs = [parse_peer(text) for text in peers]
    if peer_specs and vae is not None:
        raise InputError("a peer runs the model's own VAE: leave out --vae, or the --peer")
    for peer in peer_specs:  # a missing or broken interpreter is refused before any loading
        _echo_err(f"checking the {peer.name} interpreter {peer.python}")
        check_interpreter(peer)
    specs = harness.check_backends(list(backends) or harness.default_backends())
    model_path, engines, vae = model_and_engines(model, engines, vae, log=_echo_err)
    job = Job(
        size=size,
        steps=steps,
        strength=strength,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
        batch=batch,
        vae=vae,
    )
    record = harness.run(
        model_path,
        engines,
        job,
        specs,
        warmup=warmup,
        repeats=repeats,
        cold_start=cold_start,
        log=_echo_err,
        peers=peer_specs,
    )
    out = out or Path("bench/results") / (
        f"{Path(engines).name}-{size}" + (f"-batch{batch}" if batch > 1 else "")
    )
    command = " ".join(["fastimg bench", *sys.argv[2:]])
    written = report.save(record, out, command, images=save_images)
    click.echo(report.table(record))
    for path in written:
        click.echo(f"wrote {path}")


@cli.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path("fastimg-quickstart"),
    show_default=True,
    help="Where the model, engines and result go.",
)
@_domain_errors
def quickstart(workdir: Path) -> None:
    """Offline tour: make a tiny model, export it, transform the bundled example image."""
    from ..errors import require

    require("torch", "export")
    from fastimg_export.engine_writer import export_engines
    from fastimg_export.random_models import write_random_model

    from ..diffusion.pipeline import Img2ImgPipeline
    from ..engine_folder.layout import MANIFEST
    from ..media.images import load_image
    from ..media.labels import save_image

    model, engines, result = workdir / "tiny-model", workdir / "engines", workdir / "house.png"
    if not (model / "model_index.json").is_file():
        _echo_err(f"[1/3] building a random-weight tiny model in {model}")
        write_random_model("tiny", model)
    if not (engines / MANIFEST).is_file():
        _echo_err(f"[2/3] exporting it to verified ONNX engines in {engines}")
        export_engines(str(model), engines, overwrite=True, log=_echo_err)
    _echo_err("[3/3] transforming the bundled example image")
    pipe = Img2ImgPipeline.from_engines(engines)
    prompt = "a watercolor painting of a cozy house at sunset"
    (image,) = pipe(
        prompt,
        load_image(EXAMPLE_IMAGE),
        strength=0.6,
        num_inference_steps=20,
        guidance_scale=7.5,
        seed=0,
    )
    save_image(image, result, image.info)
    click.echo(f"done: {result.absolute()}")
    click.echo(
        "The tiny model has random weights, so the picture is noise-like; export a real "
        "model with  fastimg export MODEL -o ENGINES  and run  fastimg transform IMAGE "
        "--engines ENGINES --prompt TEXT -o OUT"
    )


cli.add_command(transform)
cli.add_command(run_jobs)
cli.add_command(inspect_images)
cli.add_command(video)
cli.add_command(serve)


def main() -> None:
    """Console entry point."""
    cli()
