"""fastimg comfyui: fastimg's nodes put where ComfyUI loads custom nodes."""

from pathlib import Path

import click

from .common import PathType, domain_errors, echo_err


@click.group()
def comfyui() -> None:
    """fastimg's ComfyUI nodes: Load fastimg engines, fastimg img2img, Save fastimg image."""


@comfyui.command()
@click.argument("comfyui_dir", type=PathType(file_okay=False, path_type=Path))
@click.option(
    "--engines",
    type=PathType(file_okay=False, path_type=Path),
    help="Engine folder the example workflow loads [default: fastimg-quickstart/engines].",
)
@domain_errors
def install(comfyui_dir: Path, engines: Path | None) -> None:
    """Write custom_nodes/comfyui-fastimg into COMFYUI_DIR (the folder with ComfyUI's main.py).

    ComfyUI's Python must import fastimg too: install fastimg there (python -m pip install
    fastimg with the python that runs ComfyUI), then restart ComfyUI.
    """
    from ..comfyui.install import API_WORKFLOW, EXAMPLE_INPUT
    from ..comfyui.install import install as install_nodes

    target = install_nodes(comfyui_dir, engines)
    click.echo(str(target))
    echo_err(
        f"installed; restart ComfyUI: its templates list {target.name}'s fastimg_img2img "
        f"(it transforms input/{EXAMPLE_INPUT}); {target / API_WORKFLOW} is the same workflow "
        "for ComfyUI's /prompt"
    )
