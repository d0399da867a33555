"""The near-real-time models at full size against diffusers (slow: exports of several GB).

python -m pytest -m slow tests/e2e/test_parity_fast_models_slow.py
"""

import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow


def ours(engines):
    return Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")


def test_lcm_at_full_size(lcm, photo):
    ref = diffusers.LatentConsistencyModelImg2ImgPipeline.from_pretrained(
        str(lcm[0]), safety_checker=None, requires_safety_checker=False
    )
    ref.set_progress_bar_config(disable=True)
    settings = dict(prompt="a fox", num_inference_steps=4, strength=0.5, guidance_scale=8.0)
    generator = torch.Generator("cpu").manual_seed(1)
    expected = ref(image=photo, generator=generator, **settings).images[0]
    got = ours(lcm[1])(image=photo, seed=1, scheduler="lcm", **settings)[0]
    assert psnr(expected, got) >= 40.0


@pytest.mark.parametrize("steps,strength", [(1, 1.0), (2, 0.5)])
def test_sd_turbo_at_full_size(sd_turbo, photo, steps, strength):
    from tests.e2e.test_parity import reference

    settings = dict(prompt="a fox", num_inference_steps=steps, strength=strength)
    generator = torch.Generator("cpu").manual_seed(2)
    ref = reference(sd_turbo[0])
    expected = ref(image=photo, generator=generator, guidance_scale=0.0, **settings).images[0]
    got = ours(sd_turbo[1])(image=photo, seed=2, guidance_scale=0.0, **settings)[0]
    assert psnr(expected, got) >= 40.0


def test_sd15_with_taesd_and_a_fused_lora_at_full_size(sd15_taesd_lora, photo):
    from tests.e2e.test_parity import reference, run_reference

    model, engines = sd15_taesd_lora
    ref = reference(model)
    ref.vae = diffusers.AutoencoderTiny.from_pretrained(model.parent / "taesd")
    ref.load_lora_weights(str(model.parent / "sd15-lora.safetensors"), adapter_name="x")
    ref.fuse_lora(adapter_names=["x"], lora_scale=1.0)
    settings = dict(prompt="a fox", num_inference_steps=4, strength=0.5, guidance_scale=7.5)
    config = dict(ref.scheduler.config)
    expected = run_reference(ref, config, "ddim", photo, seed=3, **settings)[0]
    got = ours(engines)(image=photo, seed=3, scheduler="ddim", **settings)[0]
    assert psnr(expected, got) >= 40.0
