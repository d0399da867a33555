"""The Save node's files: PNGs with fastimg's labels and ComfyUI's workflow metadata."""

import json
import os
from pathlib import Path

from ..errors import InputError
from ..media.labels import save_image
from .tensors import to_pil_images


def save_batch(images, labels: list[dict], prefix: str, prompt=None, extra_pnginfo=None,
               output_dir: str | None = None) -> list[dict]:  # fmt: skip
    """Write each image of an IMAGE batch as PNG with its labels; ComfyUI's `prompt` and
    `extra_pnginfo` (the workflow) go in as ComfyUI's SaveImage writes them. The result lists
    each file as ComfyUI's UI and /history name outputs: filename, subfolder, type."""
    pictures = to_pil_images(images)
    if not isinstance(labels, list) or len(labels) != len(pictures):
        raise InputError(
            f"{len(pictures)} images but labels for "
            f"{len(labels) if isinstance(labels, list) else 'none'}: connect the labels output "
            "of the fastimg img2img node that made these images"
        )
    output_dir = output_dir or _comfy_output_dir()
    width, height = pictures[0].size
    folder, name, counter, subfolder = _names(prefix, output_dir, width, height)
    text = {} if _metadata_disabled() else _comfy_text(prompt, extra_pnginfo)
    saved = []
    for index, (picture, info) in enumerate(zip(pictures, labels, strict=True)):
        file = f"{name.replace('%batch_num%', str(index))}_{counter + index:05}_.png"
        save_image(picture, Path(folder) / file, info, text=text)
        saved.append({"filename": file, "subfolder": subfolder, "type": "output"})
    return saved


def _comfy_text(prompt, extra_pnginfo) -> dict[str, str]:
    """ComfyUI's own PNG text: `prompt` (the API graph) and each extra_pnginfo entry."""
    text = {}
    if prompt is not None:
        text["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        text[key] = json.dumps(value)
    return text


def _names(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """(folder, file name stem, first counter, subfolder) as ComfyUI names its outputs."""
    try:
        import folder_paths
    except ImportError:
        os.makedirs(output_dir, exist_ok=True)
        return output_dir, prefix, 1, ""
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, output_dir, width, height
    )
    return folder, name, counter, subfolder


def _comfy_output_dir() -> str:
    try:
        import folder_paths
    except ImportError:
        raise InputError("no output folder: the Save node writes into ComfyUI's") from None
    return folder_paths.get_output_directory()


def _metadata_disabled() -> bool:
    """Whether ComfyUI runs with --disable-metadata (then it writes no prompt or workflow)."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return False
    return bool(args.disable_metadata)
