"""A LoRA fused at export against diffusers with the same LoRA loaded and fused."""

import json

import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SETTINGS = dict(prompt="a red fox", strength=0.7, num_inference_steps=6, guidance_scale=5.0)


@pytest.fixture(scope="module")
def lora_file(tiny_lora):
    return tiny_lora[0].parent / "tiny-lora.safetensors"


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_a_fused_lora_matches_diffusers_with_the_lora_fused(tiny_lora, lora_file, photo, sampler):
    from tests.e2e.test_parity import reference, run_reference

    ref = reference(tiny_lora[0])
    ref.load_lora_weights(str(lora_file), adapter_name="x")
    ref.fuse_lora(adapter_names=["x"], lora_scale=0.8)
    config = dict(ref.scheduler.config)
    expected = run_reference(
        ref, config, sampler, photo, seed=2, num_images_per_prompt=2, **SETTINGS
    )
    ours = Img2ImgPipeline.from_engines(tiny_lora[1], backend="onnxruntime", precision="fp32")
    got = ours(image=photo, seed=2, scheduler=sampler, num_images_per_prompt=2, **SETTINGS)
    for e, g in zip(expected, got, strict=True):
        assert psnr(e, g) >= 40.0
    plain = run_reference(reference(tiny_lora[0]), config, sampler, photo, seed=2, **SETTINGS)
    assert psnr(plain[0], got[0]) < 40.0  # the LoRA changed the image: not a vacuous match


def test_the_manifest_lists_the_lora_and_info_shows_it(tiny_lora, lora_file):
    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg.engine_folder.integrity import sha256

    (lora,) = json.loads((tiny_lora[1] / "manifest.json").read_text())["loras"]
    assert lora["name"] == "tiny-lora.safetensors" and lora["scale"] == 0.8
    assert lora["sha256"] == sha256(lora_file)
    assert lora["components"] == ["text_encoder", "unet"]
    result = CliRunner().invoke(cli, ["info", str(tiny_lora[1])])
    assert "lora            tiny-lora.safetensors at scale 0.8" in result.output


def test_a_fused_sdxl_lora_matches_diffusers_with_the_lora_fused(tiny_sdxl_lora, photo):
    from tests.e2e.test_parity import reference, run_reference

    model, engines = tiny_sdxl_lora
    ref = reference(model)
    ref.load_lora_weights(str(model.parent / "tiny-sdxl-lora.safetensors"), adapter_name="x")
    ref.fuse_lora(adapter_names=["x"], lora_scale=0.7)
    config = dict(ref.scheduler.config)
    expected = run_reference(ref, config, "euler", photo, seed=2, **SETTINGS)
    ours = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    got = ours(image=photo, seed=2, scheduler="euler", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    plain = run_reference(reference(model), config, "euler", photo, seed=2, **SETTINGS)
    assert psnr(plain[0], got[0]) < 40.0  # the LoRA changed the image
    (lora,) = json.loads((engines / "manifest.json").read_text())["loras"]
    assert lora["components"] == ["text_encoder", "text_encoder_2", "unet"]
