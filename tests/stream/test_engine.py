from dataclasses import replace

import numpy as np
import pytest

from fastimg.diffusion.rng import TorchCompatibleGenerator
from fastimg.errors import InputError
from fastimg.media import images
from fastimg.media.images import psnr
from fastimg.stream.engine import StreamEngine, StreamSettings

from .conftest import CountingSession


def single(pipe, image, s: StreamSettings):
    """The single-image call a stream frame with settings `s` stands for."""
    return pipe(
        s.prompt, image, strength=s.strength, num_inference_steps=s.steps,
        guidance_scale=s.guidance, negative_prompt=s.negative_prompt or None, seed=s.seed,
        scheduler=s.sampler,
    )[0]  # fmt: skip


def run_all(engine, frames):
    """Every output of a stream of `frames` (tags 0, 1, ...), pushes then flush, in order."""
    outs = [engine.push(frame, k) for k, frame in enumerate(frames)]
    return [out for out in outs if out is not None] + engine.flush()


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "dpmpp_2m", "lcm"])
def test_all_off_equals_the_single_image_call(tiny_pipe, frames, sampler):
    s = StreamSettings("a cat", "blur", strength=0.6, steps=4, guidance=4.0, sampler=sampler,
                       seed=5)  # fmt: skip
    engine = StreamEngine(tiny_pipe, s)
    outs = [engine.push(frame, k) for k, frame in enumerate(frames[:2])]
    assert [o.tag for o in outs] == [0, 1] and not any(o.skipped for o in outs)
    for out, frame in zip(outs, frames, strict=False):
        expected = single(tiny_pipe, frame, s)
        assert psnr(out.image, expected) >= 40
        assert out.image.info["fastimg:seed"] == 5
        assert out.image.info["fastimg:scheduler"] == sampler
    assert engine.flush() == []


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "lcm"])
def test_stream_batch_gives_each_frame_its_single_call_later(tiny_pipe, frames, sampler):
    s = StreamSettings("a cat", strength=0.75, steps=4, guidance=3.0, sampler=sampler, seed=2,
                       stream_batch=True)  # fmt: skip
    stages = tiny_pipe.plan(sampler, 4, 0.75).steps
    assert stages == 3
    unet = CountingSession(tiny_pipe.sessions["unet"])
    tiny_pipe.sessions["unet"], original = unet, tiny_pipe.sessions["unet"]
    try:
        engine = StreamEngine(tiny_pipe, s)
        pushed = [engine.push(frame, k) for k, frame in enumerate(frames[:4])]
        calls_while_pushing = unet.calls
        rest = engine.flush()
    finally:
        tiny_pipe.sessions["unet"] = original
    assert pushed[:2] == [None, None]  # the batch fills
    assert [o.tag for o in pushed[2:]] == [0, 1] and [o.tag for o in rest] == [2, 3]
    # one UNet call per frame pushed, frames at different steps in one batch (CFG doubles it)
    assert calls_while_pushing == 4 and unet.rows[:4] == [2, 4, 6, 6]
    for out in pushed[2:] + rest:
        assert psnr(out.image, single(tiny_pipe, frames[out.tag], s)) >= 40
        assert out.image.info["fastimg:stream_batch"] is True


def test_stream_batch_is_refused_where_the_sampler_keeps_history(tiny_pipe):
    s = StreamSettings("a cat", sampler="dpmpp_2m", stream_batch=True)
    with pytest.raises(InputError, match="--sampler lcm"):
        StreamEngine(tiny_pipe, s)


def test_feedback_blends_the_last_output_latents_into_the_next_start(tiny_pipe, frames):
    f, s = 0.3, StreamSettings("a cat", strength=0.6, steps=4, guidance=2.0, seed=4)
    engine = StreamEngine(tiny_pipe, StreamSettings(**{**vars(s), "feedback": f}))
    first, second = (engine.push(frame, k) for k, frame in enumerate(frames[:2]))

    # the formula, on the pipeline's stages: z' = (1 - f) z + f x_prev
    pipe, embeddings = tiny_pipe, tiny_pipe.encode_prompt("a cat", None, cfg=True)
    plan = pipe.plan(first.image.info["fastimg:scheduler"], 4, 0.6)
    previous, expected = None, []
    for frame in frames[:2]:
        rng = TorchCompatibleGenerator(4)
        z = pipe.encode_image(images.to_pixels(frame, 8), rng)
        if previous is not None:
            z = np.float32(1 - f) * z + np.float32(f) * previous
        previous = pipe.denoise(z, embeddings, plan, 2.0, rng)
        expected.append(pipe.decode(previous)[0])
    assert psnr(first.image, expected[0]) >= 40  # the first frame has nothing to blend
    assert psnr(first.image, single(pipe, frames[0], s)) >= 40
    assert psnr(second.image, expected[1]) >= 40
    assert psnr(second.image, single(pipe, frames[1], s)) < 40  # it changed the frame
    assert second.image.info["fastimg:feedback"] == f


def test_update_changes_prompt_seed_strength_without_reloading(tiny_pipe, frames):
    text = CountingSession(tiny_pipe.sessions["text_encoder"])
    tiny_pipe.sessions["text_encoder"], original = text, tiny_pipe.sessions["text_encoder"]
    before = {name: id(session) for name, session in tiny_pipe.sessions.items()}
    s = StreamSettings("a stream prompt", strength=0.5, steps=4, seed=1)
    try:
        engine = StreamEngine(tiny_pipe, s)
        engine.push(frames[0], 0)
        engine.push(frames[1], 1)
        assert text.calls == 1  # encoded once, not per frame
        engine.update(prompt="another stream prompt")
        changed = engine.push(frames[2], 2)
        assert text.calls == 2
        engine.update(seed=9, strength=0.75)
        reseeded = engine.push(frames[3], 3)
        assert text.calls == 2
        after = {name: id(session) for name, session in tiny_pipe.sessions.items()}
    finally:
        tiny_pipe.sessions["text_encoder"] = original
    assert after == before  # the same engines: nothing loaded or compiled again
    new = StreamSettings("another stream prompt", strength=0.5, steps=4, seed=1)
    assert psnr(changed.image, single(tiny_pipe, frames[2], new)) >= 40
    new = StreamSettings("another stream prompt", strength=0.75, steps=4, seed=9)
    assert psnr(reseeded.image, single(tiny_pipe, frames[3], new)) >= 40
    assert engine.settings.seed == 9 and reseeded.image.info["fastimg:strength"] == 0.75


def test_update_refuses_what_it_cannot_change_and_keeps_the_settings(tiny_pipe):
    engine = StreamEngine(tiny_pipe, StreamSettings("a cat"))
    with pytest.raises(InputError, match="cannot change steps"):
        engine.update(steps=3)
    with pytest.raises(InputError, match="strength"):
        engine.update(strength=2.0)
    assert engine.settings == StreamSettings("a cat")


def test_a_strength_change_finishes_the_frames_in_flight_first(tiny_pipe, frames):
    s = StreamSettings("a cat", strength=0.75, steps=4, sampler="lcm", seed=3, stream_batch=True)
    engine = StreamEngine(tiny_pipe, s)
    assert engine.push(frames[0], 0) is None and engine.push(frames[1], 1) is None
    engine.update(strength=0.5)  # 2 steps from now on: frames 0 and 1 end on their 3
    outs = [engine.push(frame, k) for k, frame in enumerate(frames[2:4], start=2)]
    outs = [o for o in outs if o is not None] + engine.flush()
    assert [o.tag for o in outs] == [0, 1, 2, 3]
    assert psnr(outs[0].image, single(tiny_pipe, frames[0], s)) >= 40
    later = StreamSettings("a cat", strength=0.5, steps=4, sampler="lcm", seed=3)
    assert psnr(outs[3].image, single(tiny_pipe, frames[3], later)) >= 40


def test_flush_keeps_input_order_with_skipped_frames_in_flight(tiny_pipe, frames):
    s = StreamSettings("a cat", strength=0.75, steps=4, sampler="euler", stream_batch=True,
                       similarity=0.9, max_skip=1)  # fmt: skip
    engine = StreamEngine(tiny_pipe, s)
    stream = [frames[0], frames[0], frames[0], frames[1], frames[2]]
    outs = run_all(engine, stream)
    assert [o.tag for o in outs] == [0, 1, 2, 3, 4]
    # an identical frame is always skipped, at most max_skip in a row
    assert [o.skipped for o in outs] == [False, True, False, False, False]
    assert outs[1].image is outs[0].image


def test_a_skipped_frame_reuses_the_last_output_at_once_without_the_batch(tiny_pipe, frames):
    engine = StreamEngine(tiny_pipe, StreamSettings("a cat", similarity=0.5, max_skip=3))
    first = engine.push(frames[0], "a")
    again = engine.push(frames[0].copy(), "b")
    assert again.skipped and again.tag == "b" and again.image is first.image


def test_frames_of_another_size_are_resized_to_the_stream_size(tiny_pipe, frames):
    engine = StreamEngine(tiny_pipe, StreamSettings("a cat", width=40, height=32))
    out = engine.push(frames[0], 0)
    other = engine.push(frames[1].resize((80, 72)), 1)
    assert out.image.size == other.image.size == (40, 32)


def test_bad_frames_and_options_are_refused_by_name(tiny_pipe):
    with pytest.raises(InputError, match="PIL image"):
        StreamEngine(tiny_pipe, StreamSettings("a cat")).push(np.zeros((8, 8, 3)), 0)
    with pytest.raises(InputError, match="rcfg must be one of"):
        StreamEngine(tiny_pipe, StreamSettings("a cat", rcfg="half"))
    with pytest.raises(InputError, match="feedback"):
        StreamEngine(tiny_pipe, StreamSettings("a cat", feedback=1.0))
    with pytest.raises(InputError, match="seed must be a whole number"):
        StreamEngine(tiny_pipe, StreamSettings("a cat", seed=None))
    with pytest.raises(InputError, match="similarity"):
        StreamEngine(tiny_pipe, StreamSettings("a cat", similarity=0.0))


@pytest.mark.parametrize(
    "folder,sampler,steps",
    [("tiny_taesd", "lcm", 4), ("tiny_turbo", "euler_a", 4), ("tiny_lcm", "lcm", 3)],
)
def test_stream_batch_on_taesd_turbo_and_lcm_distilled_folders(request, frames, folder, sampler,
                                                                steps):  # fmt: skip
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(request.getfixturevalue(folder)[1], backend="onnxruntime")
    s = StreamSettings("a cat", strength=0.5, steps=steps, guidance=2.0, sampler=sampler, seed=6,
                       stream_batch=True)  # fmt: skip
    outs = run_all(StreamEngine(pipe, s), frames[:3])
    assert [o.tag for o in outs] == [0, 1, 2]
    assert pipe.plan(sampler, steps, 0.5).steps >= 2  # frames did share UNet batches
    for out in outs:
        assert psnr(out.image, single(pipe, frames[out.tag], s)) >= 40


def test_frames_run_with_the_pipelines_loaded_loras(tiny, frames, tmp_path):
    pytest.importorskip("torch")
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg_export.random_models import write_random_model

    lora = write_random_model("tiny-lora", tmp_path / "style.safetensors")
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", loras=(f"{lora}:0.8",))
    s = StreamSettings("a cat", strength=0.75, steps=4, sampler="euler", seed=2,
                       stream_batch=True)  # fmt: skip
    outs = run_all(StreamEngine(pipe, s), frames[:2])
    with_lora = single(pipe, frames[0], s)
    assert psnr(outs[0].image, with_lora) >= 40
    assert outs[0].image.info["fastimg:loras"] == with_lora.info["fastimg:loras"]
    pipe.set_lora_scales({name: 0.0 for name in pipe.loras.adapters.scales})
    assert psnr(outs[0].image, single(pipe, frames[0], s)) < 40  # the LoRA did change it


@pytest.fixture(scope="module")
def control_pipe(tiny_controlnet):
    """The tiny model with a ControlNet, on ONNX Runtime (fp32)."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime")


@pytest.mark.parametrize("given", ["preprocess", "image"])
def test_a_frame_with_a_control_equals_the_single_call_with_it(control_pipe, frames, given):
    if given == "preprocess":  # the control made from each frame
        control = {"control_preprocess": "canny", "controlnet_conditioning_scale": 1.5}
    else:  # one fixed control image for every frame
        control = {"control_image": frames[5], "controlnet_conditioning_scale": 1.5}
    s = StreamSettings("a cat", strength=0.6, steps=3, guidance=4.0, seed=2, control=control)
    engine = StreamEngine(control_pipe, s)
    outs = [engine.push(frame, k) for k, frame in enumerate(frames[:2])]
    for frame, out in zip(frames[:2], outs, strict=True):
        alone = control_pipe("a cat", frame, strength=0.6, num_inference_steps=3,
                             guidance_scale=4.0, seed=2, **control)[0]  # fmt: skip
        assert psnr(out.image, alone) >= 40
    plain = single(control_pipe, frames[0], replace(s, control=None))
    assert psnr(outs[0].image, plain) < 40  # (the control shows)


def test_a_frame_with_a_depth_control_equals_the_single_call_with_it(tiny_controlnet_depth, frames):
    """control_preprocess depth in a stream: each frame's depth map made by the folder's depth
    model, as the single call makes it."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_controlnet_depth[1], backend="onnxruntime")
    control = {"control_preprocess": "depth", "controlnet_conditioning_scale": 1.5}
    s = StreamSettings("a cat", strength=0.6, steps=3, guidance=4.0, seed=2, control=control)
    out = StreamEngine(pipe, s).push(frames[0], 0)
    alone = pipe("a cat", frames[0], strength=0.6, num_inference_steps=3, guidance_scale=4.0,
                 seed=2, **control)[0]  # fmt: skip
    assert psnr(out.image, alone) >= 40
    assert psnr(out.image, single(pipe, frames[0], replace(s, control=None))) < 40


def diffusers_keep(steps: int, start: float, end: float) -> list[float]:
    """controlnet_keep as StableDiffusionControlNetImg2ImgPipeline computes it."""
    return [1.0 - float(i / steps < start or (i + 1) / steps > end) for i in range(steps)]


@pytest.mark.parametrize(
    "sampler,guidance,window",
    [("euler", 3.0, (0.0, 0.5)), ("lcm", 0.0, (0.4, 1.0)), ("ddim", 0.0, (0.0, 1.0))],
)
def test_stream_batch_with_a_fixed_control_gives_each_frame_its_single_call(
    control_pipe, frames, sampler, guidance, window
):
    control = {"control_image": frames[5], "controlnet_conditioning_scale": 1.5,
               "control_guidance_start": window[0], "control_guidance_end": window[1]}  # fmt: skip
    s = StreamSettings("a cat", strength=0.75, steps=4, guidance=guidance, sampler=sampler,
                       seed=2, stream_batch=True, control=control)  # fmt: skip
    still = [frames[0]] * 5  # a still input: the steady state is every frame's single call
    outs = run_all(StreamEngine(control_pipe, s), still)
    assert [o.tag for o in outs] == [0, 1, 2, 3, 4]
    alone = control_pipe("a cat", frames[0], strength=0.75, num_inference_steps=4, seed=2,
                         guidance_scale=guidance, scheduler=sampler, **control)[0]  # fmt: skip
    for out in outs:
        assert psnr(out.image, alone) >= 40
        for key in ("fastimg:control_model", "fastimg:control_scale", "fastimg:control_end"):
            assert out.image.info[key] == alone.info[key]
    plain = single(control_pipe, frames[0], replace(s, control=None))
    assert psnr(outs[-1].image, plain) < 40  # (the control shows)


@pytest.mark.parametrize("window", [(0.0, 0.5), (0.4, 1.0)])
def test_the_control_window_is_evaluated_at_each_rows_step(control_pipe, frames, window):
    name = control_pipe.manifest.control["controlnets"][0]["component"]
    sessions = control_pipe.sessions
    net = CountingSession(sessions[name])
    sessions[name], original = net, sessions[name]
    control = {"control_image": frames[5], "control_guidance_start": window[0],
               "control_guidance_end": window[1]}  # fmt: skip
    s = StreamSettings("a cat", strength=0.75, steps=4, sampler="lcm", seed=2,
                       stream_batch=True, control=control)  # fmt: skip
    try:
        engine = StreamEngine(control_pipe, s)
        for k in range(4):
            engine.push(frames[k], k)
    finally:
        sessions[name] = original
    steps = control_pipe.plan("lcm", 4, 0.75).steps
    kept = diffusers_keep(steps, *window)
    # push k runs one UNet call over the frames in flight, at steps 0 .. min(k, steps - 1):
    # the ControlNet runs on the rows inside the window only, and not at all where none is
    steered = [sum(kept[: min(k, steps - 1) + 1]) for k in range(4)]
    assert net.rows == [int(n) for n in steered if n]


def test_stream_batch_with_a_control_made_from_each_frame(control_pipe, frames):
    control = {"control_preprocess": "canny", "controlnet_conditioning_scale": 1.5}
    s = StreamSettings("a cat", strength=0.75, steps=4, sampler="lcm", seed=2,
                       stream_batch=True, control=control)  # fmt: skip
    outs = run_all(StreamEngine(control_pipe, s), frames[:4])
    assert [o.tag for o in outs] == [0, 1, 2, 3]
    for out in outs:  # each frame with its own edges, though frames share UNet batches
        alone = control_pipe("a cat", frames[out.tag], strength=0.75, num_inference_steps=4,
                             guidance_scale=0.0, seed=2, scheduler="lcm", **control)[0]  # fmt: skip
        assert psnr(out.image, alone) >= 40


def test_stream_batch_with_a_control_on_an_sdxl_controlnet(tiny_sdxl_controlnet, frames):
    """SDXL's ControlNet takes the rows' text_embeds and time_ids too."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_sdxl_controlnet[1], backend="onnxruntime")
    control = {"control_image": frames[5], "controlnet_conditioning_scale": 1.5,
               "control_guidance_start": 0.3}  # fmt: skip
    s = StreamSettings("a cat", strength=0.75, steps=4, guidance=2.0, sampler="euler", seed=2,
                       stream_batch=True, control=control)  # fmt: skip
    outs = run_all(StreamEngine(pipe, s), frames[:3])
    assert [o.tag for o in outs] == [0, 1, 2]
    for out in outs:
        alone = pipe("a cat", frames[out.tag], strength=0.75, num_inference_steps=4, seed=2,
                     guidance_scale=2.0, scheduler="euler", **control)[0]  # fmt: skip
        assert psnr(out.image, alone) >= 40
    assert psnr(outs[0].image, single(pipe, frames[0], replace(s, control=None))) < 40
