"""Tiled VAE decoding in the memory estimate: a tile's decoder call, larger images let through."""

import pytest
from PIL import Image

from fastimg import machine
from fastimg.diffusion import memory
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.errors import InputError
from tests.diffusion.test_memory import SD15_LIKE

GiB = 2**30
FUSED = frozenset({"unet", "vae_decoder", "vae_encoder"})  # OpenVINO: no score matrix held


def test_a_tiled_decoder_is_estimated_as_one_tile_plus_the_image_it_builds():
    whole = memory.needs(SD15_LIKE, 2048, 2048, 2, True, FUSED)
    tiled = memory.needs(SD15_LIKE, 2048, 2048, 2, True, FUSED, tile=512)
    tile = memory.call_bytes(SD15_LIKE, "vae_decoder", 512, 512, 2, True)
    assert tiled["vae_decoder"] == tile + 2 * 3 * 2048 * 2048 * 4
    assert tiled["vae_decoder"] < whole["vae_decoder"] / 10
    assert {k: v for k, v in tiled.items() if k != "vae_decoder"} == {
        k: v for k, v in whole.items() if k != "vae_decoder"
    }  # the encoder and the UNet see the whole image either way
    small = memory.needs(SD15_LIKE, 384, 256, 1, True, FUSED, tile=512)
    assert small == memory.needs(SD15_LIKE, 384, 256, 1, True, FUSED)  # one tile: the image


def test_tiles_lift_the_largest_side_until_another_component_bounds_it():
    untiled = memory.largest_side(SD15_LIKE, 16 * GiB, True, FUSED)
    tiled = memory.largest_side(SD15_LIKE, 16 * GiB, True, FUSED, tile=512)
    assert tiled > untiled
    bound = memory.needs(SD15_LIKE, tiled + 64, tiled + 64, 1, True, FUSED, tile=512)
    assert max(bound, key=bound.get) == "vae_encoder"  # next: the encoder, which is never tiled
    unfused = memory.largest_side(SD15_LIKE, 16 * GiB, tile=512)  # attention scores held
    assert unfused < tiled
    bound = memory.needs(SD15_LIKE, unfused + 64, unfused + 64, 1, True, tile=512)
    assert max(bound, key=bound.get) == "unet"  # the UNet's scores bound it, tiles or not


def test_a_refusal_for_the_decoder_offers_tiles_with_the_side_they_take():
    free = 16 * GiB
    tiled = memory.largest_side(SD15_LIKE, free, True, FUSED, tile=512)
    with pytest.raises(InputError) as error:
        memory.images_per_call(SD15_LIKE, 2048, 2048, 1, True, free, FUSED)
    message = str(error.value)
    assert "for the vae_decoder" in message
    assert f"decode the VAE in tiles, which takes sides up to {tiled} px here" in message
    assert message.endswith("--vae-tile-size 512")
    assert memory.images_per_call(SD15_LIKE, 2048, 2048, 1, True, free, FUSED, tile=512) == 1
    with pytest.raises(InputError) as error:  # the UNet's scores: tiles would not help
        memory.images_per_call(SD15_LIKE, 2048, 2048, 1, True, free)
    assert "vae-tile-size" not in str(error.value)


def test_an_image_too_large_to_decode_whole_runs_in_tiles(tiny, monkeypatch):
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": 32 * 2**20)
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    tiled_side = pipe.engines.max_side(pipe.device, 64)
    assert pipe.max_side < tiled_side  # the tiny decoder's activations bound the whole image
    image = Image.new("RGB", (tiled_side, tiled_side), (120, 80, 40))
    job = dict(prompt="a cat", image=image, strength=0.5, num_inference_steps=2, seed=1)
    monkeypatch.setattr(memory, "SUGGESTED_TILE", 64)  # (512 is no tile for the tiny images)
    with pytest.raises(InputError) as error:
        pipe(**job)
    assert f"sides up to {pipe.max_side} px" in str(error.value)
    assert str(error.value).endswith(f"which takes sides up to {tiled_side} px here: "
                                     "--vae-tile-size 64")  # fmt: skip
    (out,) = pipe(**job, vae_tile_size=64)
    assert out.size == (tiled_side, tiled_side)
    with pytest.raises(InputError, match=f"sides up to {tiled_side} px"):
        pipe(**{**job, "image": image.resize((tiled_side + 64,) * 2)}, vae_tile_size=64)


def test_tiles_never_lower_the_side_taken_whole_at_load(tiny, monkeypatch):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    whole = pipe.max_side
    # less free now than at load (what earlier calls left with the engines is theirs to reuse,
    # and the call's own check counts it): the side check must not refuse what it took whole
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": 8 * 2**20)
    assert pipe.engines.max_side(pipe.device, 64) < whole
    assert pipe.engines.side_limit(pipe.device, 64, whole)[0] == whole
    monkeypatch.setattr(machine, "free_bytes", lambda device="cpu": 64 * 2**30)
    assert pipe.engines.side_limit(pipe.device, 64, 128)[0] > 128  # and tiles still lift it
