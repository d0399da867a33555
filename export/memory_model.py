"""The activation-memory coefficients each component gets in the manifest (see
fastimg.diffusion.memory).

One call of `batch` images of H x W pixels is taken to need

    weights_factor * weight bytes + batch * (per_pixel * H * W + per_token_pair * T**2)

bytes beyond the loaded weights, T being the latent tokens. per_pixel counts LIVE tensors of the
component's full-resolution channels in fp32 (the UNet's at the latent resolution);
per_token_pair is one attention score matrix and its softmax at the first resolution with
attention, for backends that hold the scores whole; weights_factor is the scratch memory a
backend sets up per call in proportion to the weights (OpenVINO's UNet). The constants were
measured on the sd15 architecture, ONNX Runtime and OpenVINO on the CPU, 128-1024 px, as the
peak resident memory of one call beyond the loaded engine (bench/memory_probe.py; figures in
bench/results/memory-sd15.md), and rounded up: the estimate errs on the side of refusing.
"""

LIVE = {"vae_decoder": 13, "vae_encoder": 6, "unet": 100}
# ONNX Runtime's graphs with Winograd convolutions hold their transformed tiles too: on sd15's
# VAE at 1024 px the decoder's call grew 10501 MiB and the encoder's 4564 MiB (estimates 6656
# and 3072 for the standard graph); the UNet's converted layers are its smallest (323 MiB at 512
# px, 2 images, against an estimate of 1000). Rounded up, as LIVE is.
WINOGRAD_ACTIVATIONS = {"vae_decoder": 1.8, "vae_encoder": 1.8}
WEIGHTS_FACTOR = {"unet": 0.6, "unet_control": 0.6, "controlnet": 0.6}
# A ControlNet is the UNet's down and mid blocks (taken to hold the UNet's LIVE channels: not
# measured, rounded up as the UNet's) and a conditioning embedding at the full pixel resolution
# (its first convolutions, about COND_LIVE tensors of its first channels). The UNet that takes
# the residuals holds them too: every down residual and the mid one, in fp32.
COND_LIVE = 4
SCORE_BYTES = 2 * 4  # an fp32 attention score matrix and its softmax


def memory_model(pipe) -> dict:
    """Per component, the coefficients fastimg.diffusion.memory evaluates."""
    levels = len(pipe.vae.config.block_out_channels) - 1
    vae_channels = pipe.vae.config.block_out_channels[0]
    unet = pipe.unet.config
    tiny = type(pipe.vae).__name__ == "AutoencoderTiny"  # (TAESD has no attention)
    vae_scores = (
        0 if tiny or not pipe.vae.config.get("mid_block_add_attention", True) else SCORE_BYTES
    )
    model = {
        "vae_encoder": {"per_pixel": LIVE["vae_encoder"] * vae_channels * 4},
        "vae_decoder": {"per_pixel": LIVE["vae_decoder"] * vae_channels * 4},
        "unet": {"per_pixel": LIVE["unet"] * unet.block_out_channels[0] * 4 / 4**levels},
    }
    model["vae_encoder"]["per_token_pair"] = model["vae_decoder"]["per_token_pair"] = vae_scores
    model["unet"]["per_token_pair"] = _unet_scores(unet)
    model.update(_control_models(pipe, model["unet"], levels))
    for component, entry in model.items():
        kind = "controlnet" if component.startswith("controlnet") else component
        entry["weights_factor"] = WEIGHTS_FACTOR.get(kind, 0.0)
    return model


def _control_models(pipe, unet: dict, levels: int) -> dict:
    """The coefficients of each ControlNet and of the UNet taking their residuals (none
    without a ControlNet)."""
    from .onnx_export import controlnets, residual_layout

    nets = controlnets(pipe)
    if not nets:
        return {}
    latent = 4**levels  # image pixels per latent pixel
    residuals = sum(4 * channels / (latent * 4**level)
                    for channels, level in residual_layout(pipe.unet.config))  # fmt: skip
    models = {"unet_control": {"per_pixel": unet["per_pixel"] + residuals,
                               "per_token_pair": unet["per_token_pair"]}}  # fmt: skip
    for name, net in nets:
        config = net.config
        embedding = config.conditioning_embedding_out_channels[0]
        models[name] = {
            "per_pixel": LIVE["unet"] * config.block_out_channels[0] * 4 / latent
            + COND_LIVE * embedding * 4,
            "per_token_pair": _unet_scores(config),
        }
    return models


def _unet_scores(config) -> float:
    """Score bytes per pair of latent tokens at the UNet's first level with attention."""
    for level, block in enumerate(config.down_block_types):
        if "CrossAttn" in block:
            heads = config.num_attention_heads or config.attention_head_dim
            heads = heads[level] if isinstance(heads, list | tuple) else heads
            return SCORE_BYTES * heads / 16**level  # each level halves both sides
    return 0.0
