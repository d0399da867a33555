"""A model exported with TAESD in place of its VAE against diffusers with vae=AutoencoderTiny."""

import json

import pytest

from fastimg.diffusion import schedules
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def taesd_pair(tiny_taesd):
    from tests.e2e.test_parity import reference

    model, engines = tiny_taesd
    ref = reference(model)
    ref.vae = diffusers.AutoencoderTiny.from_pretrained(model.parent / "taesd")
    ours = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    return ref, ours


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("strength,guidance,images", [(0.6, 7.5, 2), (1.0, 1.0, 1)])
def test_a_tiny_vae_matches_diffusers_with_autoencoder_tiny(
    taesd_pair, photo, sampler, strength, guidance, images
):
    from tests.e2e.test_parity import run_reference

    ref, ours = taesd_pair
    settings = dict(
        prompt="a red fox",
        strength=strength,
        num_inference_steps=6,
        guidance_scale=guidance,
        num_images_per_prompt=images,
    )
    config = dict(ref.scheduler.config)
    expected = run_reference(ref, config, sampler, photo, seed=5, **settings)
    got = ours(image=photo, seed=5, scheduler=sampler, **settings)
    for e, g in zip(expected, got, strict=True):
        assert e.size == g.size and psnr(e, g) >= 40.0


def test_the_manifest_says_which_vae_the_engines_hold(tiny_taesd):
    manifest = json.loads((tiny_taesd[1] / "manifest.json").read_text())
    assert manifest["vae"]["kind"] == "tiny" and manifest["vae"]["source"].endswith("taesd")
    outputs = manifest["components"]["vae_encoder"]["outputs"]
    assert list(outputs) == ["latents"] and outputs["latents"]["shape"][1] == 4
    assert manifest["vae_scaling_factor"] == 1.0


def test_info_names_the_vae(tiny_taesd):
    from click.testing import CliRunner

    from fastimg.cli import cli

    result = CliRunner().invoke(cli, ["info", str(tiny_taesd[1])])
    assert result.exit_code == 0 and "VAE             tiny from " in result.output
