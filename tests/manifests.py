"""Complete, valid manifest data around the parts a test is about, for Manifest.from_data."""

from fastimg.engine_folder.layout import COMPONENTS, FORMAT, FORMAT_VERSION

SHA = "0" * 64
SPEC = {"dtype": "float32", "shape": [1]}


def component(name: str, **entry) -> dict:
    """A component entry with one input and one output; `entry` replaces any field."""
    return {
        "path": f"{name}/model.onnx",
        "files": {},
        "inputs": {"x": SPEC},
        "outputs": {"y": SPEC},
        **entry,
    }


def complete(components: dict | None = None, **fields) -> dict:
    """An SD manifest with every required field; `components` entries are merged into the
    default ones, `fields` replace top-level fields."""
    entries = {name: component(name) for name in COMPONENTS}
    for name, entry in (components or {}).items():
        entries[name] = {**entries.get(name, component(name)), **entry}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vae_scale_factor": 8,
        "vae_scaling_factor": 0.18215,
        "tokenizer": {"path": "tokenizer/tokenizer.json", "max_length": 77, "pad_id": 0},
        "scheduler": {},
        "components": entries,
        **fields,
    }


def exported_in(precision: str):
    """A Manifest of a folder whose UNet was exported in `precision` (fp16: export
    --precision fp16, which leaves no fp32 graphs)."""
    from fastimg.engine_folder.manifest import Manifest

    return Manifest.from_data(None, complete({"unet": {"precision": precision}}))
