"""Where a benchmark's model and engines come from: synthetic names are built and exported."""

from pathlib import Path

from fastimg.manifest import MANIFEST

SYNTHETIC = ("tiny", "tiny-v", "tiny-lcm", "sd15", "lcm", "sd2-v")


def model_and_engines(model: str, engines: str | None, log=print) -> tuple[str, str]:
    """The model to load in diffusers and its fastimg engine folder, made if missing.

    A synthetic architecture name means the random-weight model in models/NAME (built if
    absent); any other MODEL is a diffusers folder, single file or hub id. Engines default to
    engines/NAME and are exported when the folder has no manifest.
    """
    if model in SYNTHETIC and not Path(model).exists():
        folder = Path("models") / model
        if not (folder / "model_index.json").is_file():
            from fastimg_export.random_models import write_random_model

            log(f"building the random-weight {model} model in {folder}")
            write_random_model(model, folder)
        name, model = model, str(folder)
    else:
        name = Path(model.rstrip("/")).name.removesuffix(".safetensors").replace("/", "-")
    engines = engines or str(Path("engines") / name)
    if not (Path(engines) / MANIFEST).is_file():
        from fastimg_export.engine_writer import export_engines

        log(f"exporting {model} to {engines}")
        export_engines(model, Path(engines), log=log)
    return model, engines
