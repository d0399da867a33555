"""`fastimg comfyui install`: the folder ComfyUI loads from custom_nodes, pointing at this
fastimg (a two-line __init__.py), with the registry metadata and the example workflow: in
ComfyUI's workflow format under example_workflows/ (its template browser lists those), and in
its API format beside it (what ComfyUI's /prompt takes)."""

import json
import shutil
from pathlib import Path

from ..atomic import write_atomically
from ..errors import InputError, OutputError
from ..media.images import EXAMPLE_IMAGE

NODE_FOLDER = "comfyui-fastimg"
EXAMPLE_INPUT = "fastimg-example.png"  # the example workflow's Load Image picture
WORKFLOW = "fastimg_img2img.json"  # example_workflows/: the page's format (nodes and links)
API_WORKFLOW = "fastimg_img2img_api.json"  # the API format: {node id: class_type, inputs}
HERE = Path(__file__).parent
SHIM = '''"""fastimg's ComfyUI nodes, written by `fastimg comfyui install`."""

try:
    from fastimg.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as exc:
    raise ImportError(
        f"fastimg is not installed in ComfyUI's Python ({exc}): install it there with  "
        "python -m pip install fastimg  (the python that runs ComfyUI's main.py)"
    ) from None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''


def install(comfyui: str | Path, engines: str | Path | None = None) -> Path:
    """Write custom_nodes/comfyui-fastimg into the ComfyUI folder `comfyui` (replacing one an
    earlier install wrote) and the example's input picture; `engines` becomes the example
    workflow's engine folder. Returns the node folder."""
    comfyui = Path(comfyui).expanduser()
    if not (comfyui / "custom_nodes").is_dir():
        raise InputError(
            f"{comfyui} is not a ComfyUI folder (it has no custom_nodes/): give the folder "
            "that holds ComfyUI's main.py"
        )
    target = comfyui / "custom_nodes" / NODE_FOLDER
    if target.exists() and not _ours(target):
        raise InputError(
            f"{target} exists and is not a folder fastimg wrote: move it away, then install again"
        )
    page = json.loads((HERE / "example_workflows" / WORKFLOW).read_text(encoding="utf-8"))
    api = json.loads((HERE / API_WORKFLOW).read_text(encoding="utf-8"))
    if engines is not None:
        folder = str(Path(engines).expanduser().resolve())
        api["2"]["inputs"]["engines_folder"] = folder
        (loader,) = [node for node in page["nodes"] if node["type"] == "FastimgLoadEngines"]
        loader["widgets_values"][0] = folder  # its first widget
    files = {
        "__init__.py": SHIM.encode("utf-8"),
        "pyproject.toml": (HERE / "pyproject.toml").read_bytes(),
        f"example_workflows/{WORKFLOW}": (json.dumps(page, indent=1) + "\n").encode("utf-8"),
        API_WORKFLOW: (json.dumps(api, indent=2) + "\n").encode("utf-8"),
    }
    try:
        for name, data in files.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f, data=data: f.write(data))
        (comfyui / "input").mkdir(exist_ok=True)
        shutil.copyfile(EXAMPLE_IMAGE, comfyui / "input" / EXAMPLE_INPUT)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def _ours(target: Path) -> bool:
    """Whether `target` is a node folder an earlier install wrote (its __init__ is the shim)."""
    try:
        return (target / "__init__.py").read_text(encoding="utf-8") == SHIM
    except OSError:
        return False
