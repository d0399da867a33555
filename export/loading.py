"""Load a diffusers Stable Diffusion img2img pipeline from a local folder, a file, or a hub id."""

from pathlib import Path

from fastimg.errors import InputError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def load_pipeline(model: str):
    """StableDiffusionImg2ImgPipeline (StableDiffusionXLImg2ImgPipeline for an SDXL model) in
    float32 on the CPU, with no safety checker and no watermarker."""
    import diffusers

    quiet_hub_logging()
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(
                f"{path} is not a diffusers pipeline folder (it has no model_index.json): "
                "pass the folder that save_pretrained wrote, a .safetensors file or a hub id"
            )
        cls, options = pipeline_class(_model_index(path / "model_index.json"))
        pipe = _attempt(lambda: cls.from_pretrained(path, **options), f"folder {path}")
    elif path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise InputError(f"{path} is neither a folder nor a .safetensors/.ckpt checkpoint")
        index = {"_class_name": "StableDiffusionXLImg2ImgPipeline"} if _is_xl_file(path) else {}
        cls, options = pipeline_class(index)
        pipe = _attempt(lambda: cls.from_single_file(str(path), **options), f"checkpoint {path}")
    elif path.suffix in SINGLE_FILE_SUFFIXES or model.startswith((".", "/", "~")):
        raise InputError(f"{model} does not exist: check the path")
    else:
        load_index = diffusers.DiffusionPipeline.load_config
        index = _attempt(lambda: load_index(model), f"hub model {model}")
        cls, options = pipeline_class(index)
        pipe = _attempt(lambda: cls.from_pretrained(model, **options), f"hub model {model}")
    check_supported(pipe)
    return pipe


def _is_xl_file(path: Path) -> bool:
    """Whether a single-file checkpoint holds an SDXL model: its text encoders are stored under
    conditioner.embedders (Stability's SGM layout), an SD 1.x/2.x one's under cond_stage_model.
    A .safetensors file is judged from its header alone."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as checkpoint:
                keys = list(checkpoint.keys())
        else:
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            keys = list(state.get("state_dict", state))
    except Exception:  # unreadable: from_single_file names the problem
        return False
    return any(key.startswith("conditioner.embedders.") for key in keys)


# The components of a model_index.json that the export takes: what SD 1.x/2.x and SDXL img2img
# pipelines hold. safety_checker and feature_extractor are dropped knowingly (fastimg runs no
# safety checker; a call's images are labelled as AI-made instead), and so is an SDXL
# watermarker (not a component of the index). Any other non-null component is refused by name.
EXPORTED_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae",
                       "scheduler", "controlnet")  # fmt: skip
DROPPED_COMPONENTS = ("safety_checker", "feature_extractor")
# What to do instead, for the components fastimg knows it does not export.
NOT_EXPORTED = {
    "image_encoder": "fastimg does not export IP-Adapter image encoders: export the pipeline "
    "without it (set image_encoder to null in model_index.json)",
}


def check_components(model_index: dict, where: str = "this pipeline") -> None:
    """Refuse a model_index.json that lists a component the export would otherwise drop."""
    for name, value in model_index.items():
        if name.startswith("_") or not isinstance(value, list | tuple) or len(value) != 2:
            continue  # config values (requires_safety_checker, ...), not components
        if value[0] is None or value[1] is None:
            continue  # a component left out (null)
        if name in EXPORTED_COMPONENTS or name in DROPPED_COMPONENTS:
            continue
        fix = NOT_EXPORTED.get(
            name,
            "fastimg exports SD 1.x/2.x and SDXL img2img pipelines (text encoders, tokenizers, "
            "UNet, VAE, scheduler): export a pipeline without it",
        )
        raise InputError(f"{where} has a {name} ({value[1]}), which the export would drop: {fix}")


def pipeline_class(model_index: dict):
    """The img2img pipeline class for a model_index.json, and the options it loads with."""
    import diffusers

    where = f"the {model_index.get('_class_name') or 'pipeline'} model"
    check_components(model_index, where)
    controlnet = model_index.get("controlnet") or [None, None]
    if controlnet[1] is not None:
        if controlnet[1] not in ("ControlNetModel", "MultiControlNetModel"):
            raise InputError(
                f"{where} has a {controlnet[1]} as its controlnet: fastimg exports "
                "ControlNetModels (one, or several as a MultiControlNetModel); pass them with "
                "--controlnet"
            )
        if is_sdxl_index(model_index):
            return diffusers.StableDiffusionXLControlNetImg2ImgPipeline, dict(add_watermarker=False)
        inpaint = "Inpaint" in str(model_index.get("_class_name", ""))
        kind = "Inpaint" if inpaint else "Img2Img"
        return getattr(diffusers, f"StableDiffusionControlNet{kind}Pipeline"), dict(
            safety_checker=None, requires_safety_checker=False
        )
    if is_sdxl_index(model_index):
        kind = "Inpaint" if "Inpaint" in str(model_index.get("_class_name", "")) else "Img2Img"
        return getattr(diffusers, f"StableDiffusionXL{kind}Pipeline"), dict(add_watermarker=False)
    if model_index.get("_class_name") == "StableDiffusionInpaintPipeline":
        return diffusers.StableDiffusionInpaintPipeline, dict(
            safety_checker=None, requires_safety_checker=False
        )
    return diffusers.StableDiffusionImg2ImgPipeline, dict(
        safety_checker=None, requires_safety_checker=False
    )


def is_sdxl_index(model_index: dict) -> bool:
    """Whether a model_index.json describes an SDXL pipeline (it has a second text encoder)."""
    name = str(model_index.get("_class_name", ""))
    return "text_encoder_2" in model_index or name.startswith("StableDiffusionXL")


def is_sdxl(pipe) -> bool:
    """Whether a loaded pipeline has SDXL's two-encoder, added-conditioning layout."""
    return hasattr(pipe, "text_encoder_2")


def _model_index(path: Path) -> dict:
    import json

    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path} cannot be read as JSON ({exc}): the model folder is damaged"
        ) from None
    return index if isinstance(index, dict) else {}


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


# Tiny autoencoders on the hub whose shapes are alike but whose latents are each family's own.
TINY_VAES = {"madebyollin/taesd": False, "madebyollin/taesdxl": True}  # hub id: for SDXL


def check_vae_fits(pipe, vae, source: str) -> None:
    """Refuse a VAE whose latents are not the ones the model's UNet denoises."""
    latent, unet = vae.config.latent_channels, pipe.unet.config.in_channels
    if unet not in (latent, 2 * latent + 1):  # (an inpainting UNet's: latents, mask, masked)
        raise InputError(
            f"the VAE {source} makes {latent}-channel latents, but this model's UNet takes "
            f"{unet}: it is a VAE for another architecture"
        )
    sdxl = is_sdxl(pipe)
    if TINY_VAES.get(source.strip("/").lower(), sdxl) != sdxl:
        want = next(hub for hub, for_sdxl in TINY_VAES.items() if for_sdxl == sdxl)
        family = "SDXL" if sdxl else "SD 1.x/2.x"
        raise InputError(
            f"the VAE {source} is the tiny autoencoder of another model family (its latents "
            f"are not this {family} model's): use {want}"
        )


def diffusers_scheduler(config: dict, sampler: str):
    """diffusers' scheduler that fastimg's `sampler` reproduces, built from a scheduler config."""
    import diffusers

    from fastimg.diffusion import schedules

    cls = getattr(diffusers, schedules.DIFFUSERS_CLASS[sampler])
    return cls.from_config({**config, **schedules.SAMPLER_OVERRIDES.get(sampler, {})})


def runtime_scheduler(scheduler):
    """diffusers' scheduler for the sampler `fastimg transform` runs by default on a model whose
    own scheduler is `scheduler`: that one where fastimg has it, else ddim with its config."""
    from fastimg.diffusion import schedules

    config = dict(scheduler.config)
    named = {**config, "_class_name": type(scheduler).__name__}
    return diffusers_scheduler(config, schedules.runtime_sampler(named))


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


def load_controlnet(source: str):
    """A ControlNetModel from its folder (or a pipeline folder with a controlnet/ inside) or a
    hub id."""
    import json

    import diffusers

    quiet_hub_logging()
    path = Path(source)
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            path = path / "controlnet"
        config = path / "config.json"
        try:
            name = json.loads(config.read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            name = None
        if name != "ControlNetModel":
            raise InputError(
                f"{source} is not a ControlNet folder (its config.json names "
                f"{name or 'no ControlNetModel'}): pass a folder written by "
                "ControlNetModel.save_pretrained, a pipeline folder with a controlnet/ in it, "
                "or a hub id such as lllyasviel/control_v11p_sd15_canny"
            )
        return _attempt(lambda: diffusers.ControlNetModel.from_pretrained(path), f"{path}")
    if path.suffix or source.startswith((".", "/", "~")):
        raise InputError(f"ControlNet {source} does not exist: check the path")
    load = diffusers.ControlNetModel.from_pretrained
    return _attempt(lambda: load(source), f"hub ControlNet {source}")


def add_controlnet(pipe, controlnet, source: str) -> None:
    """Give an SD 1.x/2.x or SDXL base pipeline a ControlNet to export beside its UNet, after
    any it has (several are a MultiControlNetModel, as diffusers holds them)."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from .onnx_export import controlnets

    if is_sdxl(pipe) and pipe.text_encoder is None:
        raise InputError(
            f"the ControlNet {source} was given for an SDXL refiner: fastimg exports ControlNets "
            "for SD 1.x/2.x and SDXL base models"
        )
    check_controlnet_fits(pipe.unet.config, controlnet.config, source)
    nets = [net for _, net in controlnets(pipe)] + [controlnet.eval()]
    pipe.controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets).eval()


def check_controlnet_fits(unet, controlnet, source: str) -> None:
    """Refuse a ControlNet (config) whose residuals or text width are not the UNet's (config)."""
    from .onnx_export import residual_layout

    kind, wanted = controlnet.get("addition_embed_type"), unet.get("addition_embed_type")
    if kind != wanted:
        made, model = (("SDXL", "an SD 1.x/2.x") if kind == "text_time" else
                       ("SD 1.x/2.x", "an SDXL"))  # fmt: skip
        raise InputError(
            f"the ControlNet {source} is made for {made} (added conditioning {kind!r}), but "
            f"this is {model} model (its UNet's: {wanted!r}): pass a ControlNet made for this "
            "architecture"
        )
    added, embeds = (c.get("projection_class_embeddings_input_dim") for c in (controlnet, unet))
    if added != embeds:
        raise InputError(
            f"the ControlNet {source} embeds {added} added values, this model's UNet {embeds}: "
            "it is a ControlNet for another base model"
        )
    width, wanted = controlnet.cross_attention_dim, unet.cross_attention_dim
    if width != wanted:
        raise InputError(
            f"the ControlNet {source} attends to {width}-wide text embeddings, but this model's "
            f"UNet to {wanted}-wide ones: it is a ControlNet for another base model (SD 1.x is "
            "768, SD 2.x 1024)"
        )
    if residual_layout(controlnet) != residual_layout(unet):
        raise InputError(
            f"the ControlNet {source}'s blocks ({list(controlnet.block_out_channels)} channels, "
            f"{controlnet.layers_per_block} layers each) are not this UNet's "
            f"({list(unet.block_out_channels)}, {unet.layers_per_block}): it is a ControlNet "
            "for another base model"
        )
    if unet.get("time_cond_proj_dim") is not None:
        raise InputError(
            "this model's UNet is LCM-distilled (time_cond_proj_dim): fastimg does not export "
            f"ControlNets (such as {source}) for LCM-distilled UNets yet"
        )
    latent = unet.get("out_channels", 4)
    if controlnet.get("in_channels", latent) != latent:
        raise InputError(
            f"the ControlNet {source} takes {controlnet.get('in_channels')} input channels, but "
            f"a ControlNet sees the {latent} latent channels (an inpainting UNet's mask and "
            "masked image go to the UNet only): use a ControlNet of the plain base model"
        )
    if controlnet.get("global_pool_conditions"):
        raise InputError(
            f"the ControlNet {source} pools its conditions (global_pool_conditions, guess "
            "mode): fastimg does not export such ControlNets yet"
        )


def is_inpainting(pipe) -> bool:
    """Whether the UNet also takes a mask and the masked image's latents (9 channels for SD)."""
    config = pipe.unet.config
    return config.get("in_channels", 4) != config.get("out_channels", 4)


def check_supported(pipe) -> None:
    """Refuse pipelines whose UNet needs inputs fastimg does not export yet."""
    config = pipe.unet.config
    latent = pipe.vae.config.get("latent_channels", 4)
    if config.get("in_channels", latent) not in (latent, 2 * latent + 1):
        raise InputError(
            f"this UNet takes {config.get('in_channels')} input channels: fastimg exports "
            f"UNets taking the {latent} latent channels, or {2 * latent + 1} for inpainting "
            "(latents, mask, masked image latents)"
        )
    from .onnx_export import controlnets

    for name, net in controlnets(pipe):
        check_controlnet_fits(config, net.config, f"{name} of this pipeline")
    added = config.get("addition_embed_type")
    if not is_sdxl(pipe):
        if added is not None:
            raise InputError(
                f"this UNet needs {added!r} added conditioning, but the pipeline is not an SDXL "
                "one: fastimg exports SD 1.x/2.x and SDXL (base, refiner, turbo) img2img pipelines"
            )
        return
    if added != "text_time":
        raise InputError(
            f"this SDXL pipeline's UNet takes {added!r} added conditioning; fastimg exports "
            "SDXL UNets with 'text_time' conditioning (base, refiner, turbo) only"
        )
    if config.get("time_cond_proj_dim") is not None:
        raise InputError(
            "this SDXL UNet is LCM-distilled (time_cond_proj_dim): fastimg does not export "
            "LCM-distilled SDXL UNets yet (SD 1.x LCMs and SDXL-Turbo it does)"
        )
    if pipe.vae.config.get("latents_mean") is not None:
        raise InputError(
            "this SDXL VAE normalizes latents with latents_mean/latents_std (Playground-style): "
            "fastimg does not export that yet"
        )
    if getattr(pipe, "text_encoder_2", None) is None:
        raise InputError("this SDXL pipeline has no text_encoder_2: it cannot be exported")
