"""The engine folder commands: make-model (random-weight models of the real architectures),
export (a diffusers model to verified ONNX engines), info (what a folder holds) and build
(TensorRT plans for this GPU)."""

from pathlib import Path

import click

from .common import PathType, domain_errors, echo_err

# export/random_models.py defines them: pipelines, standalone VAEs, LoRA files
ARCHITECTURES = (
    *("tiny", "tiny-v", "tiny-lcm", "tiny-turbo", "sd15", "lcm", "sd2-v", "sd-turbo"),
    *("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sdxl-turbo", "sdxl", "sdxl-refiner", "sdxl-turbo"),
    *("taesd", "taesdxl"),
    *("tiny-lora", "sd15-lora", "tiny-sdxl-lora"),
    "tiny-controlnet",
    "tiny-multi-controlnet",
    "tiny-sdxl-controlnet",
    "tiny-inpaint-controlnet",
    "tiny-inpaint",
    "tiny-sdxl-inpaint",
    "tiny-lcm-inpaint",
    "tiny-depth",  # a DPT depth model, for export --depth-model
)


@click.command("make-model")
@click.argument("arch", type=click.Choice(ARCHITECTURES))
@click.option(
    "-o",
    "--output",
    type=PathType(path_type=Path),
    required=True,
    help="Folder (a .safetensors file for a LoRA).",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@domain_errors
def make_model(arch: str, output: Path, seed: int) -> None:
    """Write a random-weight pipeline, VAE or LoRA of a real architecture (fastimg[export])."""
    from ..errors import require

    require("torch", "export")
    from fastimg_export.random_models import write_random_model

    echo_err(f"building random-weight {arch} pipeline")
    write_random_model(arch, output, seed=seed)
    click.echo(f"model written to {output}")


@click.command("export")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=PathType(path_type=Path),
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
    help="Also write int8 graphs for OpenVINO (--precision int8 at run time), quantized "
    "with NNCF on calibration images: the UNet (see --int8-unet), the VAE (full int8; a VAE "
    "graph too far from fp32 is quantized again with its worst layers in float), the text "
    "encoder's weights and, with ControlNets, each ControlNet and the UNet taking their "
    "residuals (the UNet's method, calibrated with control images), each VAE, text encoder "
    "and ControlNet graph kept only where measured faster than its default path and close "
    "enough to fp32; the figures are recorded (needs fastimg[int8]).",
)
@click.option(
    "--int8-unet",
    type=click.Choice(["auto", "hybrid", "full"]),
    default="auto",
    show_default=True,
    help="The int8 UNet's method for --int8: hybrid (MatMul weights int8, their activations "
    "in float; convolutions int8), full (MatMul activations int8 too, after SmoothQuant), "
    "or auto: both written and measured, the faster one whose image is close enough to "
    "fp32's kept (the hybrid where neither is); auto costs a second UNet quantization. "
    "ControlNets and the UNet taking their residuals take the method named; under auto the "
    "hybrid, and where the UNet keeps full, full too, each keeping the one its figures choose.",
)
@click.option(
    "--int8-images",
    type=click.IntRange(2, 64),
    default=4,
    show_default=True,
    help="Calibration images for --int8 (one is held out to measure the error).",
)
@click.option(
    "--controlnet",
    "controlnets",
    multiple=True,
    metavar="FOLDER_OR_ID",
    help="Export a ControlNet (a ControlNetModel folder or hub id) beside the UNet, for "
    "transform --control-image; repeat it for several (their residuals summed, as diffusers' "
    "MultiControlNetModel; control images go to them in this order). SD 1.x/2.x and SDXL "
    "base models, each with ControlNets made for it.",
)
@click.option(
    "--depth-model",
    default=None,
    metavar="FOLDER_OR_ID",
    help="Export a DPT depth model (e.g. Intel/dpt-large) beside the ControlNet, for "
    "--control-preprocess depth (a depth map of the input made by the engines, no torch).",
)
@click.option(
    "--cuda-fp16",
    is_flag=True,
    help="Also write each component's graph (ControlNets' and the depth model's too) in fp16 "
    "for ONNX Runtime CUDA (--backend onnxruntime-cuda runs them by default, --precision "
    "fp16), each verified against PyTorch; a VAE that overflows in fp16 (SDXL's) keeps "
    "running in fp32. Adds about half the folder's size.",
)
@domain_errors
def export(
    model: str,
    output: Path,
    precision: str,
    overwrite: bool,
    vae: str | None,
    loras: tuple[str, ...],
    int8: bool,
    int8_images: int,
    int8_unet: str,
    controlnets: tuple[str, ...],
    depth_model: str | None,
    cuda_fp16: bool,
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
        log=echo_err,
        vae=vae,
        loras=list(loras),
        int8_images=int8_images if int8 else 0,
        controlnets=list(controlnets),
        depth_model=depth_model,
        int8_unet=int8_unet,
        cuda_fp16=cuda_fp16,
    )
    click.echo(f"engines written to {output}")


@click.command()
@click.argument("engines", type=PathType(path_type=Path))
@click.option("--verify", is_flag=True, help="Re-hash every file against the manifest (SHA-256).")
@domain_errors
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
    ]
    if manifest.inpainting:
        channels = manifest.unet_in_channels
        lines.append(f"inpainting      the UNet takes a mask ({channels} channels): --mask FILE")
    lines.append("components:")
    column = _variant_column(manifest)
    for name, entry in manifest.components.items():
        size = sum(f["bytes"] for f in entry["files"].values()) / 1e6
        parity = entry.get("parity", {})
        own = manifest.component_precision(name)
        lines.append(
            f"  {name:<13} {entry['path']:<26} {size:9.1f} MB  vs torch: rel "
            f"{parity.get('max_rel_error', float('nan')):.2e} (limit {parity.get('tolerance')})"
            + (f", in {own}" if own != manifest.precision else "")
        )
        for side in ("inputs", "outputs"):
            io = ", ".join(
                f"{k} {v['dtype']}[{','.join(map(str, v['shape']))}]"
                for k, v in entry[side].items()
            )
            lines.append(f"      {side:<8} {io}")
        for backend, variant in entry.get("variants", {}).items():
            line = f"      {backend:<{column}} {variant['path']}"
            if "parity" in variant:  # checked against PyTorch as the component was
                checked = variant["parity"]
                error = checked.get("max_rel_error", float("nan"))
                tolerance = checked.get("tolerance", parity.get("tolerance"))
                line = f"{line:<{column + 42}} vs torch: rel {error:.2e} (limit {tolerance})"
            if "quantization" in variant:
                q, error = variant["quantization"], variant["quantization"]["error"]
                line += (
                    f"  {q['method']}: output relative RMS error "
                    f"{error['output_relative_rms_error']:.3g}, {error['layers']} layers "
                    f"(median {error['median_relative_rms_error']:.3g}, "
                    f"worst {error['max_relative_rms_error']:.3g})"
                )
            lines.append(line)
            if variant.get("quantization", {}).get("reason"):
                lines.append(f"      {'':<{column}} {variant['quantization']['reason']}")
            lines += _float_layers(variant.get("quantization", {}))
        if "int8_dropped" in entry:
            dropped = entry["int8_dropped"]
            lines.append(f"      {'int8 (none)':<{column}} {dropped['method']} {dropped['reason']}")
            lines += _float_layers(dropped)
        if "int8_static_dropped" in entry:  # (the int8 graph runs with static shapes too)
            dropped = entry["int8_static_dropped"]
            lines.append(f"      {'int8 static (none)':<{column}} {dropped['reason']}")
        for other in entry.get("int8_alternatives", []):
            lines.append(f"      {'int8 (other)':<{column}} {other['reason']}")
    if "int8" in manifest.data:
        mix = manifest.data["int8"]
        lines.append(
            f"int8            --precision int8 runs {', '.join(mix['components'])} in int8: "
            f"image {mix['image']['psnr_db']:.1f} dB from fp32's"
            + (
                f" ({mix['control_image']['psnr_db']:.1f} dB with a control image)"
                if "control_image" in mix
                else ""
            )
            + (
                f"; {mix['static_image']['psnr_db']:.1f} dB with static shapes"
                if "static_image" in mix
                else ""
            )
        )
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


def _variant_column(manifest) -> int:
    """The width of the column naming each component's graph variants and int8 records."""
    labels = ["int8 (other)"]
    for entry in manifest.components.values():
        labels += entry.get("variants", {})
        labels += ["int8 static (none)"] if "int8_static_dropped" in entry else []
    return max(map(len, labels))


@click.command()
@click.argument("engines", type=PathType(path_type=Path))
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
@domain_errors
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
    """Build TensorRT engines for this GPU from ENGINES' ONNX, one per component: ControlNets,
    the UNet taking their residuals and the depth model included (needs fastimg[tensorrt])."""
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
        log=echo_err,
        device=device,
    )
    click.echo(f"TensorRT engines {key} ready in {engines / 'tensorrt' / key}")


def _float_layers(quantization: dict) -> list[str]:
    """The info line of an int8 graph quantized again with layers in float (none otherwise)."""
    attempts = quantization.get("attempts", [])
    if not attempts:
        return []
    tried = ", ".join(f"{len(a['float_layers'])}: {a['psnr_db']:.1f} dB" for a in attempts)
    return [f"      {'':<14} {len(quantization['float_layers'])} layers in float (tried {tried})"]
