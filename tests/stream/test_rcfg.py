"""Residual CFG and the stream batch against a NumPy reimplementation of StreamDiffusion's
formulas (StreamDiffusion.predict_x0_batch, unet_step and scheduler_step_batch, LCM steps)."""

import numpy as np
import pytest

from fastimg.diffusion import schedules
from fastimg.diffusion.rng import TorchCompatibleGenerator
from fastimg.errors import InputError
from fastimg.media import images
from fastimg.media.images import psnr
from fastimg.stream.engine import StreamEngine, StreamSettings

from .conftest import CountingSession

PROMPT, NEGATIVE, GUIDANCE, SEED, DELTA = "a cat", "blur", 3.0, 11, 1.0


def unet_call(pipe, feeds: dict, control=None):
    """The UNet's noise prediction; with `control` (the control image's pixels, its scale),
    as StreamDiffusion's ControlNet forks run it: the ControlNet over the whole UNet batch,
    every row with the control image, then the UNet with its residuals."""
    if control is None:
        return pipe.sessions["unet"].run(feeds)["out_sample"]
    pixels, scale = control
    spec = pipe.manifest.control
    net = pipe.sessions[spec["controlnets"][0]["component"]]
    cond = np.repeat(pixels, len(feeds["sample"]), axis=0)
    residuals = net.run({**feeds, "controlnet_cond": cond,
                         "conditioning_scale": np.array([scale], np.float32)})  # fmt: skip
    return pipe.sessions[spec["unet"]].run({**feeds, **residuals})["out_sample"]


def streamdiffusion(pipe, frames, plan, mode: str, control=None) -> list:
    """StreamDiffusion's outputs (latents) of `frames` with its denoising batch; the first
    stages - 1 outputs are of the zero-filled buffer, as StreamDiffusion's (`control`: see
    unet_call)."""
    n = plan.steps
    config = schedules.resolve_config(pipe.manifest.scheduler, "lcm")
    ac = schedules.alphas_cumprod(config).astype(np.float64)
    t = plan.timesteps
    col = lambda v: np.asarray(v, np.float32).reshape(-1, 1, 1, 1)  # noqa: E731
    alpha, beta = col(np.sqrt(ac[t.astype(int)])), col(np.sqrt(1 - ac[t.astype(int)]))
    scaled_t = t.astype(np.float64) * config["timestep_scaling"]  # LCM's boundary condition
    c_skip = col(0.25 / (scaled_t**2 + 0.25))
    c_out = col(scaled_t / np.sqrt(scaled_t**2 + 0.25))
    positive = pipe.encode_prompt(PROMPT, None, cfg=False)
    negative = pipe.encode_prompt(PROMPT, NEGATIVE, cfg=True)[:1]
    buffer, stock, outs = None, None, []
    for frame in frames:
        rng = TorchCompatibleGenerator(SEED)
        z = pipe.encode_image(images.to_pixels(frame, 8), rng)
        init = np.concatenate([rng.randn(z.shape) for _ in range(n)])
        if buffer is None:
            buffer, stock = np.zeros_like(init[1:]), np.zeros_like(init)
        x = np.concatenate([alpha[:1] * z + beta[:1] * init[:1], buffer])
        stock = np.concatenate([init[:1], stock[:-1]])
        sample, timestep, emb = x, t, np.repeat(positive, n, axis=0)
        if mode == "onetime":
            sample = np.concatenate([x[:1], x])
            timestep = np.concatenate([t[:1], t])
            emb = np.concatenate([negative, emb])
        pred = unet_call(pipe, {"sample": sample, "timestep": timestep.astype(np.float32),
                                "encoder_hidden_states": emb}, control)  # fmt: skip
        if mode == "onetime":
            pred, stock = pred[1:], np.concatenate([pred[:1], stock[1:]])
        uncond = stock * np.float32(DELTA)
        guided = uncond + np.float32(GUIDANCE) * (pred - uncond)
        denoised = c_out * (x - beta * guided) / alpha + c_skip * x
        scaled = beta * stock
        delta_x = c_out * (scaled - beta * guided) / alpha + c_skip * scaled
        one = np.ones_like(alpha[:1])
        delta_x = np.concatenate([alpha[1:], one]) * delta_x / np.concatenate([beta[1:], one])
        stock = np.concatenate([init[1:], init[:1]]) + delta_x
        outs.append(denoised[-1:])
        buffer = alpha[1:] * denoised[:-1] + beta[1:] * init[1:]
    return outs


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("mode", ["self", "onetime"])
def test_residual_cfg_follows_streamdiffusion(tiny_pipe, frames, mode, batch):
    s = StreamSettings(PROMPT, NEGATIVE, strength=0.75, steps=4, guidance=GUIDANCE,
                       sampler="lcm", seed=SEED, stream_batch=batch, rcfg=mode)  # fmt: skip
    plan = tiny_pipe.plan("lcm", 4, 0.75)
    expected = streamdiffusion(tiny_pipe, frames[:4], plan, mode)[plan.steps - 1 :]
    unet = CountingSession(tiny_pipe.sessions["unet"])
    tiny_pipe.sessions["unet"], original = unet, tiny_pipe.sessions["unet"]
    try:
        engine = StreamEngine(tiny_pipe, s)
        outs = [engine.push(frame, k) for k, frame in enumerate(frames[:4])]
        outs = [o for o in outs if o is not None] + engine.flush()
    finally:
        tiny_pipe.sessions["unet"] = original
    assert [o.tag for o in outs] == [0, 1, 2, 3]
    for out, latents in zip(outs, expected, strict=False):  # frames 0 and 1
        assert psnr(out.image, tiny_pipe.decode(latents)[0]) >= 40
    # What changes: no negative image per step (onetime: one per frame), and the images are
    # not plain CFG's.
    negatives = 1 if mode == "onetime" else 0
    if batch:
        assert unet.rows[2:4] == [plan.steps + negatives] * 2
    else:
        assert unet.rows[: plan.steps] == [1 + negatives] + [1] * (plan.steps - 1)
    plain = tiny_pipe(PROMPT, frames[0], strength=0.75, num_inference_steps=4,
                      guidance_scale=GUIDANCE, negative_prompt=NEGATIVE, seed=SEED,
                      scheduler="lcm")[0]  # fmt: skip
    assert psnr(outs[0].image, plain) < 40


def test_residual_cfg_needs_the_lcm_sampler(tiny_pipe):
    with pytest.raises(InputError, match="--sampler lcm"):
        StreamEngine(tiny_pipe, StreamSettings(PROMPT, sampler="euler", rcfg="self"))


def test_residual_cfg_is_refused_on_an_lcm_distilled_model(tiny_lcm):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_lcm[1], backend="onnxruntime")
    with pytest.raises(InputError, match="--rcfg none"):
        StreamEngine(pipe, StreamSettings(PROMPT, rcfg="onetime"))


@pytest.mark.parametrize("mode", ["self", "onetime"])
def test_residual_cfg_with_a_controlnet_follows_streamdiffusion(tiny_controlnet, frames, mode):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime")
    scale = 1.5
    control = {"control_image": frames[5], "controlnet_conditioning_scale": scale}
    s = StreamSettings(PROMPT, NEGATIVE, strength=0.75, steps=4, guidance=GUIDANCE,
                       sampler="lcm", seed=SEED, stream_batch=True, rcfg=mode,
                       control=control)  # fmt: skip
    plan = pipe.plan("lcm", 4, 0.75)
    pixels = (np.asarray(frames[5], np.float32) / np.float32(255)).transpose(2, 0, 1)[None]
    expected = streamdiffusion(pipe, frames[:4], plan, mode, (pixels, scale))[plan.steps - 1 :]
    engine = StreamEngine(pipe, s)
    outs = [engine.push(frame, k) for k, frame in enumerate(frames[:4])]
    outs = [o for o in outs if o is not None] + engine.flush()
    assert [o.tag for o in outs] == [0, 1, 2, 3]
    for out, latents in zip(outs, expected, strict=False):  # frames 0 and 1
        assert psnr(out.image, pipe.decode(latents)[0]) >= 40
    uncontrolled = streamdiffusion(pipe, frames[:4], plan, mode)[plan.steps - 1]
    assert psnr(outs[0].image, pipe.decode(uncontrolled)[0]) < 40  # (the control shows)
