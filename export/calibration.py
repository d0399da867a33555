"""Real inputs of each component for int8 calibration, made by the pipeline being exported.

diffusers' img2img runs on a few calibration images (the example photo, flipped and turned)
while hooks record what each component receives, by the exported graph's input names: the text
encoders' token ids, the VAE encoder's image, the UNet's inputs at every step (with the CFG
batch) and the VAE decoder's latents. It runs the sampler the runtime runs by default on the
model (its own scheduler, or ddim where fastimg has no equivalent: sd15's PNDM), so that the
UNet is calibrated on the runtime's timesteps and the VAE decoder on latents like those it
will decode (on the random-weight sd15 PNDM's latents were 4x the spread of the runtime's).
"""

import numpy as np

CALIBRATION_PROMPTS = (
    "a watercolor painting of a cozy house at sunset",
    "a photo of a red fox in the snow, detailed fur",
    "an oil painting of a harbour at night, moonlight",
    "a pencil sketch of a city street, crosshatching",
)
CALIBRATION_STEPS, CALIBRATION_STRENGTH, CALIBRATION_GUIDANCE = 4, 0.75, 7.5

Feeds = list[dict[str, np.ndarray]]


def calibration_feeds(pipe, images: int, log=print) -> dict[str, Feeds]:
    """Each component's inputs (by ONNX input name) that diffusers' img2img makes on `images`
    calibration images at the model's native size, with classifier-free guidance: 'unet' (SDXL's
    text_embeds and time_ids among them), 'vae_encoder', 'vae_decoder' and each text encoder."""
    feeds: dict[str, Feeds] = {"unet": [], "vae_encoder": [], "vae_decoder": []}
    undo = [_hook_unet(pipe.unet, feeds["unet"])]
    undo += _hook_vae(pipe.vae, feeds)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            feeds[name] = []
            undo.append(_hook_text_encoder(getattr(pipe, name), feeds[name]))
    run_calibration(pipe, images, undo, log)
    return feeds


def run_calibration(pipe, images: int, undo: list, log=print, label: str = "", extra=None) -> None:
    """Run `pipe` (its img2img, hooked to collect inputs) on `images` calibration images with
    the calibration settings and the runtime's sampler, `extra(image, index)` giving more
    arguments; then put its scheduler back and remove the hooks `undo` (also on failure).
    `label` ends each image's log line."""
    import torch

    from .loading import runtime_scheduler

    side, variants = calibration_images(pipe)
    pipe.set_progress_bar_config(disable=True)  # each image is logged instead
    own = pipe.scheduler  # what the manifest records: put back after
    pipe.scheduler = runtime_scheduler(own)
    try:
        for index in range(images):
            log(f"  calibration image {index + 1}/{images}{label} ({side}x{side})")
            image = variants[index % len(variants)]
            pipe(
                prompt=CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)],
                image=image,
                strength=CALIBRATION_STRENGTH,
                num_inference_steps=CALIBRATION_STEPS,
                guidance_scale=CALIBRATION_GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(index),
                **(extra(image, index) if extra else {}),
            )
    finally:
        pipe.scheduler = own
        for remove in undo:
            remove()


def calibration_images(pipe) -> tuple[int, list]:
    """The side of the model's native size and the calibration images at that size (the
    example photo, flipped and turned), taken in turn."""
    from fastimg.media.images import EXAMPLE_IMAGE, load_image

    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    photo = load_image(EXAMPLE_IMAGE).resize((side, side))
    return side, [photo, photo.transpose(0), photo.transpose(1), photo.rotate(90)]


def unet_feed(sample, timestep, encoder_hidden_states) -> dict[str, np.ndarray]:
    """The inputs every denoiser graph (UNet, ControlNet) takes first, as the graph takes them:
    the timestep a float per batch row."""
    batch = sample.shape[0]
    return {
        "sample": _array(sample),
        "timestep": np.broadcast_to(
            np.asarray(timestep, dtype=np.float32).reshape(-1), (batch,)
        ).copy(),
        "encoder_hidden_states": _array(encoder_hidden_states),
    }


def _array(tensor) -> np.ndarray:
    return tensor.detach().float().numpy().copy()


def _hook_unet(unet, feeds: Feeds):
    def capture(module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        feed = unet_feed(sample, timestep, kwargs["encoder_hidden_states"])
        if kwargs.get("timestep_cond") is not None:
            feed["timestep_cond"] = _array(kwargs["timestep_cond"])
        for name, value in (kwargs.get("added_cond_kwargs") or {}).items():  # SDXL's text_time
            feed[name] = _array(value)
        feeds.append(feed)

    return unet.register_forward_pre_hook(capture, with_kwargs=True).remove


def _hook_vae(vae, feeds: dict[str, Feeds]) -> list:
    """The VAE's encode and decode wrapped (on the instance) to record their inputs: the
    exported graphs take exactly these (the image in [-1, 1]; latents already unscaled)."""

    def recording(method, name: str, input_name: str):
        def record(x, *args, **kwargs):
            feeds[name].append({input_name: _array(x)})
            return method(x, *args, **kwargs)

        return record

    vae.encode = recording(vae.encode, "vae_encoder", "sample")
    vae.decode = recording(vae.decode, "vae_decoder", "latent_sample")

    def restore(attribute):
        return lambda: vae.__dict__.pop(attribute, None)

    return [restore("encode"), restore("decode")]


def _hook_text_encoder(encoder, feeds: Feeds):
    def capture(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        feeds.append({"input_ids": ids.detach().numpy().copy()})

    return encoder.register_forward_pre_hook(capture, with_kwargs=True).remove
