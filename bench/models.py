"""Where a benchmark's model and engines come from: synthetic names are built and exported."""

from pathlib import Path

from fastimg.engine_folder.layout import MANIFEST

SYNTHETIC = (
    *("tiny", "tiny-v", "tiny-lcm", "tiny-turbo", "sd15", "lcm", "sd2-v", "sd-turbo"),
    *("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sdxl-turbo", "sdxl", "sdxl-refiner", "sdxl-turbo"),
)
SYNTHETIC_VAES = ("taesd", "taesdxl")
# bench --controlnet random: a random-weight ControlNet of the model's UNet (ControlNetModel
# .from_unet, as real ControlNets are made: the same layers and FLOPs), built in
# models/NAME-controlnet.
RANDOM_CONTROLNET = "random"


def _synthetic(name: str, marker: str, log) -> str:
    """The random-weight model `name` in models/NAME, built if absent."""
    folder = Path("models") / name
    if not (folder / marker).is_file():
        from fastimg_export.random_models import write_random_model

        log(f"building the random-weight {name} model in {folder}")
        write_random_model(name, folder)
    return str(folder)


def model_and_engines(
    model: str, engines: str | None, vae: str | None = None, log=print, controlnet=None
) -> tuple[str, str, str | None, str | None]:
    """The model to load in diffusers, its fastimg engine folder (made if missing), the VAE
    folder both sides use in place of the model's own (None: the model's) and the ControlNet
    folder or hub id both sides run (None: none; `random` is built, see RANDOM_CONTROLNET).

    A synthetic architecture name means the random-weight model in models/NAME (built if
    absent), `taesd` likewise for the VAE; any other MODEL is a diffusers folder, single file
    or hub id. Engines default to engines/NAME (engines/NAME-VAE with another VAE,
    engines/NAME-controlnet-CONTROLNET with a ControlNet) and are exported when the folder has
    no manifest.
    """
    if model in SYNTHETIC and not Path(model).exists():
        name, model = model, _synthetic(model, "model_index.json", log)
    else:
        name = Path(model.rstrip("/")).name.removesuffix(".safetensors").replace("/", "-")
    if vae is not None:
        if vae in SYNTHETIC_VAES and not Path(vae).exists():
            name, vae = f"{name}-{vae}", _synthetic(vae, "config.json", log)
        else:
            name = f"{name}-{Path(vae.rstrip('/')).name.replace('/', '-')}"
    if controlnet is not None:
        label = Path(controlnet.rstrip("/")).name.replace("/", "-")
        if controlnet == RANDOM_CONTROLNET and not Path(controlnet).exists():
            controlnet = _random_controlnet(model, Path("models") / f"{name}-controlnet", log)
        name = f"{name}-controlnet-{label}"
    engines = engines or str(Path("engines") / name)
    if not (Path(engines) / MANIFEST).is_file():
        from fastimg_export.engine_writer import export_engines

        log(f"exporting {model} to {engines}")
        controlnets = [] if controlnet is None else [controlnet]
        export_engines(model, Path(engines), log=log, vae=vae, controlnets=controlnets)
    return model, engines, vae, controlnet


def _random_controlnet(model: str, folder: Path, log) -> str:
    """A random-weight ControlNet of `model`'s UNet in `folder`, built if absent."""
    if not (folder / "config.json").is_file():
        from fastimg_export.loading import load_pipeline
        from fastimg_export.random_controlnets import random_controlnet

        log(f"building a random-weight ControlNet of {model}'s UNet in {folder}")
        random_controlnet(load_pipeline(model).unet, seed=2).save_pretrained(folder)
    return str(folder)
