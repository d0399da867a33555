"""Random-weight ControlNet img2img pipelines for tests (make-model tiny-controlnet,
tiny-multi-controlnet, tiny-sdxl-controlnet, tiny-inpaint-controlnet): the base architecture's
random pipeline with ControlNets made from its UNet whose zero convolutions are random, not zero
(diffusers' init zeroes them, which would hide a ControlNet that is ignored)."""

# ControlNet img2img layouts: name -> (the base architecture, how many ControlNets: several
# are a MultiControlNetModel, saved as controlnet/, controlnet_1/, ...). An SDXL base gives a
# StableDiffusionXLControlNetImg2ImgPipeline, its ControlNets taking text_embeds and time_ids.
# tiny-inpaint-controlnet: StableDiffusionControlNetInpaintPipeline, a 9-channel UNet steered by a
# ControlNet of the plain layout (it takes the 4 latent channels, as diffusers feeds it).
CONTROLNETS = {
    "tiny-controlnet": ("tiny", 1),
    "tiny-multi-controlnet": ("tiny", 2),
    "tiny-sdxl-controlnet": ("tiny-sdxl", 1),
    "tiny-inpaint-controlnet": ("tiny-inpaint", 1),
}
# Large enough for the residuals to move the images clearly (random UNets barely react to less).
ZERO_CONV_STD = 0.5


def random_controlnet(unet, seed: int):
    """A ControlNet (from_unet) of `unet`'s layout whose zero convolutions are random."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    controlnet = diffusers.ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(8, 16, 32, 32)
    )
    zeroed = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
              controlnet.controlnet_cond_embedding.conv_out]  # fmt: skip
    with torch.no_grad():
        for conv in zeroed:
            conv.weight.normal_(0.0, ZERO_CONV_STD)
            conv.bias.normal_(0.0, ZERO_CONV_STD)
    return controlnet.eval()


def build_controlnet_pipeline(arch: str, seed: int = 0):
    """A StableDiffusion(XL)ControlNetImg2ImgPipeline (Inpaint on an inpainting base) on the
    base architecture's random pipeline, with one or several random ControlNets
    (random_controlnet, each its own seed; of the plain layout for an inpainting UNet)."""
    import diffusers
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from .random_models import INPAINTS, build_inpaint_pipeline, build_pipeline

    name, count = CONTROLNETS[arch]
    inpaint = name in INPAINTS
    base = build_inpaint_pipeline(name, seed) if inpaint else build_pipeline(name, seed)
    plain = build_pipeline(INPAINTS[name], seed).unet if inpaint else base.unet
    nets = [random_controlnet(plain, seed + 2 + k) for k in range(count)]
    controlnet = nets[0] if count == 1 else MultiControlNetModel(nets).eval()
    if hasattr(base, "text_encoder_2"):
        return diffusers.StableDiffusionXLControlNetImg2ImgPipeline(
            **base.components, controlnet=controlnet, add_watermarker=False,
            requires_aesthetics_score=bool(base.config.requires_aesthetics_score),
            force_zeros_for_empty_prompt=bool(base.config.force_zeros_for_empty_prompt),
        )  # fmt: skip
    parts = {name: getattr(base, name) for name in ("vae", "text_encoder", "tokenizer", "unet")}
    kind = "Inpaint" if inpaint else "Img2Img"
    return getattr(diffusers, f"StableDiffusionControlNet{kind}Pipeline")(
        **parts,
        controlnet=controlnet,
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
