"""fastimg's output against diffusers' StableDiffusionImg2ImgPipeline, same seed, same settings."""

import json
import logging
import os

import numpy as np
import pytest

from fastimg.backends.select import installed
from fastimg.diffusion import schedules
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.errors import EngineError
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

MIN_PSNR = 40.0
SLOW = pytest.mark.slow


def reference(model_dir):
    from fastimg_export.loading import load_pipeline

    pipe = load_pipeline(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, config, sampler, image, seed, **kwargs):
    from fastimg_export.loading import diffusers_scheduler

    pipe.scheduler = diffusers_scheduler(config, sampler)
    return pipe(image=image, generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images


def exact(engines, backend="onnxruntime"):
    """A pipeline on the fp32 path, the one that must match diffusers."""
    return Img2ImgPipeline.from_engines(engines, backend=backend, precision="fp32")


OPENVINO = pytest.mark.skipif(not installed("openvino"), reason="needs fastimg[openvino]")


# The full-size architectures are slow: python -m pytest -m slow tests/e2e/test_parity.py
@pytest.fixture(
    scope="module",
    params=[
        ("tiny", "onnxruntime"),
        pytest.param(("tiny", "openvino"), marks=OPENVINO),
        ("tiny_v", "onnxruntime"),
        ("tiny_winograd", "onnxruntime"),
        pytest.param(("sd15", "onnxruntime"), marks=SLOW),
        pytest.param(("sd2_v", "onnxruntime"), marks=SLOW),
    ],
    ids=lambda p: "-".join(p),
)
def pair(request):
    name, backend = request.param
    model, engines = request.getfixturevalue(name)
    ref = reference(model)
    return name, backend, ref, dict(ref.scheduler.config), exact(engines, backend)


def record(**row) -> None:
    """Append one parity figure to $FASTIMG_PARITY_RESULTS (JSON lines), when it is set."""
    if os.environ.get("FASTIMG_PARITY_RESULTS"):
        with open(os.environ["FASTIMG_PARITY_RESULTS"], "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_output_matches_diffusers(pair, photo, sampler, guidance, strength):
    name, backend, ref, config, ours = pair
    settings = dict(
        prompt="a red fox in the snow",
        strength=strength,
        num_inference_steps=10,
        guidance_scale=guidance,
        negative_prompt="blurry",
        num_images_per_prompt=2,
    )
    expected = run_reference(ref, config, sampler, photo, seed=11, **settings)
    got = ours(image=photo, seed=11, scheduler=sampler, **settings)
    assert len(got) == 2
    for e, g in zip(expected, got, strict=True):
        assert g.size == e.size == (88, 64)  # floored to multiples of 8, as diffusers does
        diff = int(np.abs(np.asarray(e, dtype=int) - np.asarray(g)).max())
        record(
            model=name,
            backend=backend,
            sampler=sampler,
            guidance=guidance,
            strength=strength,
            psnr_db=psnr(e, g),
            max_pixel_diff=diff,
        )
        assert psnr(e, g) >= MIN_PSNR
    # The two images of one call differ (fresh noise each), so the comparison is not vacuous.
    assert psnr(got[0], got[1]) < MIN_PSNR
    assert np.asarray(got[0]).std() > 10


def test_default_sampler_is_the_models_own(tiny_v, photo):
    model, engines = tiny_v
    ref = reference(model)  # EulerDiscreteScheduler, trailing spacing, v-prediction
    settings = dict(prompt="a house", strength=0.5, num_inference_steps=8, guidance_scale=5.0)
    expected = ref(image=photo, generator=torch.Generator().manual_seed(2), **settings).images[0]
    got = exact(engines)(image=photo, seed=2, **settings)[0]
    assert psnr(expected, got) >= MIN_PSNR


def test_long_prompt_is_truncated_like_diffusers(tiny, photo, caplog):
    logging.getLogger("fastimg").addHandler(caplog.handler)  # the CLI may stop propagation
    model, engines = tiny
    prompt = " ".join(["a watercolor painting of a mountain"] * 20)
    settings = dict(prompt=prompt, strength=0.5, num_inference_steps=4, guidance_scale=3.0)
    expected = reference(model)(
        image=photo, generator=torch.Generator().manual_seed(5), **settings
    ).images[0]
    got = exact(engines)(image=photo, seed=5, **settings)[0]
    assert psnr(expected, got) >= MIN_PSNR
    assert "truncated" in caplog.text
    logging.getLogger("fastimg").removeHandler(caplog.handler)


def test_fp16_engines_stay_close_to_fp32(tmp_path_factory, tiny, photo):
    from fastimg_export.engine_writer import export_engines

    model, engines = tiny
    fp16 = export_engines(
        str(model), tmp_path_factory.mktemp("fp16") / "e", precision="fp16", log=lambda m: None
    )
    settings = dict(
        prompt="a cat",
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=7.5,
        seed=1,
        scheduler="euler",
    )
    full = exact(engines)(image=photo, **settings)[0]
    pipe = Img2ImgPipeline.from_engines(fp16, backend="onnxruntime")
    half = pipe(image=photo, **settings)[0]
    # fp16 weights (ONNX Runtime on the CPU computes in fp32 where it has no fp16 kernels): 61 dB
    # on AVX-512 BF16; fp16 arithmetic, where a CPU has it (AVX-512 FP16), costs more.
    assert psnr(full, half) >= 35.0
    # What ran is what the image and the run say: the folder's fp16 graphs, not the exact path.
    assert (pipe.precision, pipe.exact, half.info["fastimg:precision"]) == ("fp16", False, "fp16")
    with pytest.raises(EngineError, match=r"exported in fp16.*no fp32 graphs.*without --precision"):
        exact(fp16)
    if installed("openvino"):  # fp32 arithmetic on fp16 weights: not the exact path either
        openvino = Img2ImgPipeline.from_engines(fp16, backend="openvino", precision="fp32")
        assert (openvino.precision, openvino.exact) == ("fp32", False)


@OPENVINO
def test_bf16_stays_close_to_fp32_and_says_what_it_ran(tiny, photo):
    from fastimg.backends.select import cpu_supports_bf16

    settings = dict(prompt="a cat", strength=0.6, num_inference_steps=10, seed=1)
    full = exact(tiny[1])(image=photo, **settings)[0]
    bf16 = Img2ImgPipeline.from_engines(tiny[1], backend="openvino", precision="bf16")
    fast = bf16(image=photo, **settings)[0]
    assert fast.info["fastimg:precision"] == bf16.precision
    if cpu_supports_bf16():
        assert (bf16.backend, bf16.precision, bf16.exact) == ("openvino", "bf16", False)
        # bf16 products, fp32 sums: 44.7-46.5 dB on AVX-512 BF16 over seeds and shapes; the
        # bound leaves AMX's other tilings some room. Below 80: really computed in bf16.
        assert 40.0 <= psnr(full, fast) < 80.0
    else:  # OpenVINO compiles f32 without native bf16, and the pipeline says so
        assert (bf16.backend, bf16.precision, bf16.exact) == ("openvino", "fp32", True)
        assert psnr(full, fast) >= 80.0
