"""Random-weight Stable Diffusion pipelines of real architectures, written as diffusers folders.

Model weights cannot be downloaded everywhere fastimg is tested, so tests and benchmarks build
these. Speed does not depend on weight values, and parity with diffusers is checked on them.
"""

import tempfile
from pathlib import Path

from fastimg.errors import InputError

from . import clip_vocab
from .loading import quiet_hub_logging
from .random_controlnets import CONTROLNETS, build_controlnet_pipeline

_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

_TINY_UNET = dict(
    sample_size=8,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=16,
)
_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
_TINY_VAE = dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8)

_SD15_UNET = dict(
    sample_size=64,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
_SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)

# The scheduler config an LCM-distilled SD 1.5 ships with (SimianLuo/LCM_Dreamshaper_v7).
_LCM_SCHEDULER = (
    "LCMScheduler",
    {
        **_SD_BETAS,
        "original_inference_steps": 50,
        "timestep_scaling": 10.0,
        "clip_sample": False,
        "set_alpha_to_one": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    },
)

# SD-Turbo as stabilityai/sd-turbo lays it out: an SD 2.1-base UNet (linear projections, heads
# per block), a 1024-wide 23-layer text encoder, epsilon prediction, Euler ancestral, trailing.
_TURBO_SCHEDULER = (
    "EulerAncestralDiscreteScheduler",
    {**_SD_BETAS, "timestep_spacing": "trailing", "steps_offset": 1},
)
_SD2_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    hidden_act="gelu",
    projection_dim=512,
)

ARCHITECTURES = {
    "tiny": dict(
        unet=_TINY_UNET,
        text=_TINY_TEXT,
        vae=_TINY_VAE,
        scheduler=(
            "DDIMScheduler",
            {**_SD_BETAS, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1},
        ),
        pad_token="<|endoftext|>",
        real_vocab=False,
    ),
    "tiny-v": dict(
        unet={**_TINY_UNET, "use_linear_projection": True},
        text={**_TINY_TEXT, "hidden_act": "gelu"},
        vae=_TINY_VAE,
        scheduler=(
            "EulerDiscreteScheduler",
            {**_SD_BETAS, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        ),
        pad_token="!",
        real_vocab=False,
    ),
    "tiny-lcm": dict(
        unet={**_TINY_UNET, "time_cond_proj_dim": 32},
        text=_TINY_TEXT,
        vae=_TINY_VAE,
        scheduler=_LCM_SCHEDULER,
        pad_token="<|endoftext|>",
        real_vocab=False,
    ),
    "tiny-turbo": dict(
        unet={**_TINY_UNET, "use_linear_projection": True, "attention_head_dim": (2, 4)},
        text={**_TINY_TEXT, "hidden_act": "gelu"},
        vae=_TINY_VAE,
        scheduler=_TURBO_SCHEDULER,
        pad_token="!",
        real_vocab=False,
    ),
    "sd15": dict(
        unet=_SD15_UNET,
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12),
        vae=_SD_VAE,
        scheduler=(
            "PNDMScheduler",
            {**_SD_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1},
        ),
        pad_token="<|endoftext|>",
        real_vocab=True,
    ),
    "lcm": dict(
        unet={**_SD15_UNET, "time_cond_proj_dim": 256},
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12),
        vae=_SD_VAE,
        scheduler=_LCM_SCHEDULER,
        pad_token="<|endoftext|>",
        real_vocab=True,
    ),
    "sd2-v": dict(
        unet={
            **_SD15_UNET,
            "sample_size": 96,
            "attention_head_dim": (5, 10, 20, 20),
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
        },
        text=_SD2_TEXT,
        vae={**_SD_VAE, "sample_size": 768},
        scheduler=(
            "DDIMScheduler",
            {
                **_SD_BETAS,
                "prediction_type": "v_prediction",
                "clip_sample": False,
                "set_alpha_to_one": False,
                "steps_offset": 1,
            },
        ),
        pad_token="!",
        real_vocab=True,
    ),
    "sd-turbo": dict(
        unet={
            **_SD15_UNET,
            "attention_head_dim": (5, 10, 20, 20),
            "cross_attention_dim": 1024,
            "use_linear_projection": True,
        },
        text=_SD2_TEXT,
        vae=_SD_VAE,
        scheduler=_TURBO_SCHEDULER,
        pad_token="!",
        real_vocab=True,
    ),
}

CLIP_VOCAB_SIZE = 49408

# SDXL layouts (StableDiffusionXLImg2ImgPipeline): CLIP-L and OpenCLIP bigG with projection, a
# UNet with "text_time" added conditioning; addition_time_embed_dim * time ids + the pooled
# width must equal projection_class_embeddings_input_dim (diffusers checks it per call).
_XL_SCHEDULER = (
    "EulerDiscreteScheduler",
    {
        **_SD_BETAS,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    },
)
_TINY_XL_TEXT = _TINY_TEXT
# Wider than the first encoder, so a wrong concatenation or pooled width cannot pass unseen.
_TINY_XL_TEXT_2 = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    hidden_act="gelu",
    projection_dim=40,
)
_TINY_XL_UNET = dict(
    sample_size=8,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    norm_num_groups=16,
    cross_attention_dim=32 + 48,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=8 * 6 + 40,
)
_TINY_XL_REFINER_UNET = {
    **_TINY_XL_UNET,
    "cross_attention_dim": 48,
    "projection_class_embeddings_input_dim": 8 * 5 + 40,
}
# stabilityai/stable-diffusion-xl-base-1.0 (sdxl-turbo has the same UNet, sample_size 64).
_SDXL_UNET = dict(
    sample_size=128,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
# stabilityai/stable-diffusion-xl-refiner-1.0: its own UNet, conditioned on bigG alone.
_SDXL_REFINER_UNET = dict(
    sample_size=128,
    layers_per_block=2,
    block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
    transformer_layers_per_block=4,
    attention_head_dim=(6, 12, 24, 24),
    use_linear_projection=True,
    cross_attention_dim=1280,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,
)
_CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
_CLIP_BIGG = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
_SDXL_VAE = {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
_TINY_XL_VAE = {**_TINY_VAE, "scaling_factor": 0.13025}
_XL_BASE = dict(pad_token="<|endoftext|>", pad_token_2="!")
_XL_REFINER = dict(
    text=None, pad_token_2="!", requires_aesthetics_score=True, force_zeros_for_empty_prompt=False
)

# StableDiffusionXLImg2ImgPipeline layouts: text=None means no first text encoder (refiner).
XL_ARCHITECTURES = {
    "tiny-sdxl": dict(
        unet=_TINY_XL_UNET,
        text=_TINY_XL_TEXT,
        text_2=_TINY_XL_TEXT_2,
        vae=_TINY_XL_VAE,
        scheduler=_XL_SCHEDULER,
        real_vocab=False,
        **_XL_BASE,
    ),
    "tiny-sdxl-refiner": dict(
        unet=_TINY_XL_REFINER_UNET,
        text_2=_TINY_XL_TEXT_2,
        vae=_TINY_XL_VAE,
        scheduler=_XL_SCHEDULER,
        real_vocab=False,
        **_XL_REFINER,
    ),
    "tiny-sdxl-turbo": dict(
        unet=_TINY_XL_UNET,
        text=_TINY_XL_TEXT,
        text_2=_TINY_XL_TEXT_2,
        vae=_TINY_XL_VAE,
        scheduler=_TURBO_SCHEDULER,
        real_vocab=False,
        **_XL_BASE,
    ),
    "sdxl": dict(
        unet=_SDXL_UNET,
        text=_CLIP_L,
        text_2=_CLIP_BIGG,
        vae=_SDXL_VAE,
        scheduler=_XL_SCHEDULER,
        real_vocab=True,
        **_XL_BASE,
    ),
    "sdxl-refiner": dict(
        unet=_SDXL_REFINER_UNET,
        text_2=_CLIP_BIGG,
        vae=_SDXL_VAE,
        scheduler=_XL_SCHEDULER,
        real_vocab=True,
        **_XL_REFINER,
    ),
    "sdxl-turbo": dict(
        unet={**_SDXL_UNET, "sample_size": 64},
        text=_CLIP_L,
        text_2=_CLIP_BIGG,
        vae={**_SDXL_VAE, "sample_size": 512},
        scheduler=_TURBO_SCHEDULER,
        real_vocab=True,
        **_XL_BASE,
    ),
}
ARCHITECTURES.update(XL_ARCHITECTURES)


def build_pipeline(arch: str, seed: int = 0):
    """A StableDiffusionImg2ImgPipeline (or, for an SDXL layout, a
    StableDiffusionXLImg2ImgPipeline) of architecture `arch` with seeded random weights."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    import diffusers
    from transformers import CLIPTextModel

    quiet_hub_logging()
    spec = ARCHITECTURES[arch]
    if arch in XL_ARCHITECTURES:
        return _build_xl_pipeline(spec, seed)
    tokenizer = _tokenizer(spec["pad_token"])
    _seed(seed)
    scheduler_class, scheduler_config = spec["scheduler"]
    return diffusers.StableDiffusionImg2ImgPipeline(
        vae=_vae(spec),
        text_encoder=CLIPTextModel(_text_config(spec, spec["text"], tokenizer)).eval(),
        tokenizer=tokenizer,
        unet=diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"]),
        scheduler=getattr(diffusers, scheduler_class)(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_xl_pipeline(spec: dict, seed: int):
    """A StableDiffusionXLImg2ImgPipeline with seeded random weights, without a watermarker."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text, text_encoder, tokenizer = spec.get("text"), None, None
    if text is not None:
        tokenizer = _tokenizer(spec["pad_token"])
    tokenizer_2 = _tokenizer(spec["pad_token_2"])
    _seed(seed)
    if text is not None:
        text_encoder = CLIPTextModel(_text_config(spec, text, tokenizer)).eval()
    config_2 = _text_config(spec, spec["text_2"], tokenizer_2)
    scheduler_class, scheduler_config = spec["scheduler"]
    return diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=_vae(spec),
        text_encoder=text_encoder,
        text_encoder_2=CLIPTextModelWithProjection(config_2).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"]),
        scheduler=getattr(diffusers, scheduler_class)(**scheduler_config),
        requires_aesthetics_score=spec.get("requires_aesthetics_score", False),
        force_zeros_for_empty_prompt=spec.get("force_zeros_for_empty_prompt", True),
        add_watermarker=False,
    )


def _tokenizer(pad_token: str):
    """A CLIP tokenizer over the small generated vocabulary, padding with `pad_token`."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as vocab_dir:
        clip_vocab.write_vocab(Path(vocab_dir))
        return CLIPTokenizer.from_pretrained(vocab_dir, pad_token=pad_token, model_max_length=77)


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _text_config(spec: dict, text: dict, tokenizer):
    """A CLIPTextConfig of the given shapes whose special ids are the tokenizer's."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE if spec["real_vocab"] else len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **text,
    )


def _vae(spec: dict):
    import diffusers

    return diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        **spec["vae"],
    )


# Standalone VAEs, written as a VAE folder (what --vae takes): TAESD's shapes are the defaults,
# and TAESDXL (madebyollin/taesdxl) has the same ones (only its trained weights differ).
VAES = {"taesd": {}, "taesdxl": {}}
# LoRA files for a base architecture, in diffusers' format: (base, also on the text encoder).
LORAS = {
    "tiny-lora": ("tiny", True),
    "sd15-lora": ("sd15", False),
    "tiny-sdxl-lora": ("tiny-sdxl", True),
}
LORA_RANK = 4


def build_vae(arch: str, seed: int = 0):
    """An AutoencoderTiny of the named shapes with seeded random weights."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    return diffusers.AutoencoderTiny(**VAES[arch]).eval()


def write_random_lora(arch: str, out: Path, seed: int = 0) -> Path:
    """A .safetensors LoRA in diffusers' format with random weights on the attention
    projections of the base model's UNet (and text encoders, for tiny-lora and
    tiny-sdxl-lora)."""
    import diffusers
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    base, text = LORAS[arch]
    pipe = build_pipeline(base, seed)
    torch.manual_seed(seed + 1)

    def adapter(model, targets):
        # init_lora_weights=False: random A and B, so the LoRA really changes the model
        config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=False,
                            target_modules=targets)  # fmt: skip
        inject_adapter_in_model(config, model)  # (transformers' own add_adapter needs newer peft)
        return get_peft_model_state_dict(model)

    unet = adapter(pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"])
    projections = ["q_proj", "k_proj", "v_proj", "out_proj"]
    text_encoder = adapter(pipe.text_encoder, projections) if text else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(pipe, "text_encoder_2"):  # SDXL: both text encoders
        diffusers.StableDiffusionXLImg2ImgPipeline.save_lora_weights(
            out.parent,
            unet_lora_layers=unet,
            text_encoder_lora_layers=text_encoder,
            text_encoder_2_lora_layers=adapter(pipe.text_encoder_2, projections),
            weight_name=out.name,
        )
        return out
    diffusers.StableDiffusionImg2ImgPipeline.save_lora_weights(
        out.parent,
        unet_lora_layers=unet,
        text_encoder_lora_layers=text_encoder,
        weight_name=out.name,
    )
    return out


# StableDiffusionInpaintPipeline layouts: name -> the base architecture, its UNet taking
# latents, the mask and the masked image's latents (4 + 1 + 4 channels); tiny-lcm-inpaint's is
# LCM-distilled as tiny-lcm's (timestep_cond), with its LCMScheduler.
INPAINTS = {
    "tiny-inpaint": "tiny",
    "tiny-sdxl-inpaint": "tiny-sdxl",
    "tiny-lcm-inpaint": "tiny-lcm",
}
DEPTHS = {"tiny-depth": "DPTForDepthEstimation"}  # (fastimg_export.depth: export --depth-model)
INPAINT_CHANNELS = 9


def build_inpaint_pipeline(arch: str, seed: int = 0):
    """A StableDiffusionInpaintPipeline (StableDiffusionXLInpaintPipeline for an SDXL base) on
    the base architecture's random pipeline, with a random 9-channel UNet of the same layout."""
    import diffusers
    import torch

    base = build_pipeline(INPAINTS[arch], seed)
    torch.manual_seed(seed + 3)
    spec = ARCHITECTURES[INPAINTS[arch]]
    unet = diffusers.UNet2DConditionModel(in_channels=INPAINT_CHANNELS, out_channels=4,
                                          **spec["unet"])  # fmt: skip
    if INPAINTS[arch] in XL_ARCHITECTURES:
        flags = {k: base.config[k] for k in ("requires_aesthetics_score",
                                             "force_zeros_for_empty_prompt")}  # fmt: skip
        parts = {**base.components, "unet": unet.eval(), **flags}
        return diffusers.StableDiffusionXLInpaintPipeline(**parts, add_watermarker=False)
    return diffusers.StableDiffusionInpaintPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet.eval(),
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_random_model(arch: str, out: Path, seed: int = 0) -> Path:
    """Write a random-weight diffusers pipeline folder (a VAE folder for a VAE name, a
    .safetensors file for a LoRA name) to `out`."""
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty: choose another path")
    if arch in DEPTHS:
        from .depth import write_random_depth

        return write_random_depth(out, seed)
    if arch in LORAS:
        if out.suffix != ".safetensors":
            raise InputError(f"a LoRA is one .safetensors file: name it {out.stem}.safetensors")
        return write_random_lora(arch, out, seed)
    if arch in VAES:
        model = build_vae(arch, seed)
    elif arch in CONTROLNETS:
        model = build_controlnet_pipeline(arch, seed)
    elif arch in INPAINTS:
        model = build_inpaint_pipeline(arch, seed)
    else:
        model = build_pipeline(arch, seed)
    model.save_pretrained(out)
    return out
