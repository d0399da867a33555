"""Load a diffusers Stable Diffusion img2img pipeline from a local folder, a file, or a hub id."""

from pathlib import Path

from fastimg.errors import InputError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def load_pipeline(model: str):
    """StableDiffusionImg2ImgPipeline in float32 on the CPU, with no safety checker."""
    import diffusers

    quiet_hub_logging()
    cls = diffusers.StableDiffusionImg2ImgPipeline
    options = dict(safety_checker=None, requires_safety_checker=False)
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(
                f"{path} is not a diffusers pipeline folder (it has no model_index.json): "
                "pass the folder that save_pretrained wrote, a .safetensors file or a hub id"
            )
        pipe = _attempt(lambda: cls.from_pretrained(path, **options), f"folder {path}")
    elif path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise InputError(f"{path} is neither a folder nor a .safetensors/.ckpt checkpoint")
        pipe = _attempt(lambda: cls.from_single_file(str(path), **options), f"checkpoint {path}")
    elif path.suffix in SINGLE_FILE_SUFFIXES or model.startswith((".", "/", "~")):
        raise InputError(f"{model} does not exist: check the path")
    else:
        pipe = _attempt(lambda: cls.from_pretrained(model, **options), f"hub model {model}")
    check_supported(pipe)
    return pipe


VAE_CLASSES = ("AutoencoderTiny", "AutoencoderKL")


def load_vae(source: str):
    """A VAE (AutoencoderTiny, e.g. TAESD, or AutoencoderKL) from a folder or hub id, to use in
    place of a model's own; a model folder with a vae/ inside is taken too."""
    import json

    import diffusers

    quiet_hub_logging()
    path = Path(source)
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file() and (path / "vae").is_dir():
            path = path / "vae"
        config = path / "config.json"
        if not (path.is_dir() and config.is_file()):
            raise InputError(
                f"{source} is not a VAE folder (it has no config.json): pass a folder written by "
                "AutoencoderTiny/AutoencoderKL.save_pretrained, a model folder with a vae/ in "
                "it, or a hub id such as madebyollin/taesd"
            )
        try:
            name = json.loads(config.read_text()).get("_class_name")
        except (ValueError, AttributeError):
            name = None
        if name not in VAE_CLASSES:
            raise InputError(
                f"{source} holds a {name or 'model of unknown kind'}, not a VAE "
                f"({' or '.join(VAE_CLASSES)}): pass the VAE's own folder"
            )
        cls = getattr(diffusers, name)
        return _attempt(lambda: cls.from_pretrained(path), f"VAE folder {path}")
    if path.suffix or source.startswith((".", "/", "~")):
        raise InputError(f"VAE {source} does not exist: check the path")
    vae = _attempt(lambda: diffusers.AutoModel.from_pretrained(source), f"hub VAE {source}")
    if type(vae).__name__ not in VAE_CLASSES:
        raise InputError(f"{source} is a {type(vae).__name__}, not a VAE: pass a VAE's hub id")
    return vae


def check_vae_fits(pipe, vae, source: str) -> None:
    """Refuse a VAE whose latents are not the ones the model's UNet denoises."""
    latent, unet = vae.config.latent_channels, pipe.unet.config.in_channels
    if latent != unet:
        raise InputError(
            f"the VAE {source} makes {latent}-channel latents, but this model's UNet takes "
            f"{unet}: it is a VAE for another architecture"
        )


def diffusers_scheduler(config: dict, sampler: str):
    """diffusers' scheduler that fastimg's `sampler` reproduces, built from a scheduler config."""
    import diffusers

    from fastimg import schedules

    cls = getattr(diffusers, schedules.DIFFUSERS_CLASS[sampler])
    return cls.from_config({**config, **schedules.SAMPLER_OVERRIDES.get(sampler, {})})


def quiet_hub_logging() -> None:
    """Silence diffusers' and transformers' progress bars and advisory warnings."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


def _attempt(load, what: str):
    try:
        return load()
    except (OSError, ValueError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0].rstrip(".") if text else type(exc).__name__
        raise InputError(
            f"could not load the {what}: {first}. Check the name or path; a hub id needs "
            "network access (or a filled Hugging Face cache), a folder must hold a complete "
            "diffusers pipeline"
        ) from None


def check_supported(pipe) -> None:
    """Refuse pipelines whose UNet needs inputs fastimg does not export yet (SDXL)."""
    config = pipe.unet.config
    if config.get("addition_embed_type") is not None:
        raise InputError(
            f"this UNet needs {config['addition_embed_type']!r} added conditioning (SDXL-style); "
            "fastimg exports SD 1.x and 2.x pipelines (LCM-distilled ones included) for now"
        )
