"""The fastimg command line. Heavy imports live inside the commands so --help stays instant."""

import logging
from pathlib import Path

import click

from .batch import inspect_images, run_jobs, transform
from .checks import bench, doctor
from .comfyui import comfyui
from .common import PathType, domain_errors, echo_err
from .engines import build, export, info, make_model
from .serve import serve
from .stream import stream
from .video import video


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        echo_err(f"{record.levelname.lower()}: {record.getMessage()}")


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


@cli.command()
@click.option(
    "--workdir",
    type=PathType(path_type=Path),
    default=Path("fastimg-quickstart"),
    show_default=True,
    help="Where the model, engines and result go.",
)
@domain_errors
def quickstart(workdir: Path) -> None:
    """Offline tour: make a tiny model, export it, transform the bundled example image."""
    from ..errors import require

    require("torch", "export")
    from fastimg_export.engine_writer import export_engines
    from fastimg_export.random_models import write_random_model

    from ..diffusion.pipeline import Img2ImgPipeline
    from ..engine_folder.layout import MANIFEST
    from ..media.images import EXAMPLE_IMAGE, load_image
    from ..media.labels import save_image

    model, engines, result = workdir / "tiny-model", workdir / "engines", workdir / "house.png"
    if not (model / "model_index.json").is_file():
        echo_err(f"[1/3] building a random-weight tiny model in {model}")
        write_random_model("tiny", model)
    if not (engines / MANIFEST).is_file():
        echo_err(f"[2/3] exporting it to verified ONNX engines in {engines}")
        export_engines(str(model), engines, overwrite=True, log=echo_err)
    echo_err("[3/3] transforming the bundled example image")
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


for command in (make_model, export, info, build, doctor, bench):
    cli.add_command(command)
cli.add_command(transform)
cli.add_command(run_jobs)
cli.add_command(inspect_images)
cli.add_command(video)
cli.add_command(serve)
cli.add_command(comfyui)
cli.add_command(stream)


def main() -> None:
    """Console entry point."""
    cli()
