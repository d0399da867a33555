import math

import numpy as np
import pytest
from PIL import Image

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.diffusion.rng import TorchCompatibleGenerator
from fastimg.diffusion.vae_tiles import OVERLAP, blend_weights, decode_tiled, tile_starts
from fastimg.errors import InputError
from fastimg.media.images import psnr, to_pixels, to_uint8

# The least PSNR of a tiled decode against the whole one on the tiny random-weight model
# (256 x 256 images, ONNX Runtime fp32), as the README's "Tiled VAE decoding" states it: a
# decoder's GroupNorm and attention see only their tile, so small tiles differ more.
TINY_BOUND_DB = {128: 23.0, 192: 31.0}
# TAESD has no GroupNorm or attention: its tiles differ only within a layer's reach of a seam.
TAESD_BOUND_DB = 60.0


@pytest.fixture(scope="module")
def pipe(tiny):
    return Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")


def smooth_image(side: int, seed: int) -> Image.Image:
    """A smooth, seeded RGB test image (waves of random frequencies)."""
    f = np.random.default_rng(seed).uniform(2, 9, 6)
    y, x = np.mgrid[0:side, 0:side] / side
    waves = [np.sin(f[0] * x + f[1] * y), np.cos(f[2] * x * y * f[3]),
             np.sin(f[4] * x) * np.cos(f[5] * y)]  # fmt: skip
    return Image.fromarray(((np.stack(waves, -1) * 0.5 + 0.5) * 255).astype(np.uint8))


@pytest.mark.parametrize("length,tile", [(8, 8), (11, 8), (16, 8), (57, 32), (64, 32), (128, 48)])
def test_tiles_cover_the_side_evenly_each_overlapping_the_next_by_a_quarter(length, tile):
    starts = tile_starts(length, tile)
    assert starts[0] == 0 and starts[-1] + tile == length
    gaps = np.diff(starts)
    assert all(tile - gap >= math.ceil(tile * OVERLAP) for gap in gaps)
    assert not len(gaps) or gaps.max() - gaps.min() <= 1
    assert tile_starts(tile - 3, tile) == [0]


@pytest.mark.parametrize("length,tile", [(88, 64), (512, 256), (456, 128), (1024, 384)])
def test_the_blend_weights_sum_to_one_everywhere(length, tile):
    starts = tile_starts(length, tile)
    weights = blend_weights(starts, tile, length)
    total = np.zeros(length)
    for start, w in zip(starts, weights, strict=True):
        assert (w > 0).all()
        total[start : start + tile] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


class LocalDecoder:
    """A decoder with no reach beyond a latent: each latent becomes a factor x factor block."""

    factor = 8

    def __init__(self):
        self.shapes = []

    def run(self, feeds):
        z = feeds["latent_sample"]
        self.shapes.append(z.shape)
        mixed = np.tanh(np.einsum("oc,nchw->nohw", np.arange(12.0).reshape(3, 4) / 10, z))
        block = np.ones((self.factor, self.factor), np.float32)
        return {"sample": np.kron(mixed, block).astype(np.float32)}


def test_tiles_of_a_decoder_without_reach_blend_into_the_whole_image():
    z = np.random.default_rng(0).standard_normal((2, 4, 40, 57)).astype(np.float32)
    decoder = LocalDecoder()
    whole = decoder.run({"latent_sample": z})["sample"]
    tiled = decode_tiled(decoder, z, 128, LocalDecoder.factor)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert set(decoder.shapes[1:]) == {(2, 4, 16, 16)}  # every tile has one shape
    assert len(decoder.shapes[1:]) == len(tile_starts(40, 16)) * len(tile_starts(57, 16))


def test_an_image_no_larger_than_a_tile_is_decoded_whole():
    decoder = LocalDecoder()
    decode_tiled(decoder, np.zeros((1, 4, 8, 11), np.float32), 128, LocalDecoder.factor)
    assert decoder.shapes == [(1, 4, 8, 11)]


@pytest.mark.parametrize("tile", sorted(TINY_BOUND_DB))
def test_tiled_decoding_is_within_the_stated_bound_on_the_tiny_model(pipe, tile):
    decoder = pipe.sessions["vae_decoder"]
    for seed in range(2):
        pixels = to_pixels(smooth_image(256, seed), 8, 1024)
        z = pipe.encode_image(pixels, TorchCompatibleGenerator(seed))
        z = z / np.float32(pipe.manifest.vae_scaling_factor)
        whole = to_uint8(decode_tiled(decoder, z, None, 8))
        tiled = to_uint8(decode_tiled(decoder, z, tile, 8))
        assert np.abs(whole.astype(int) - tiled).max() > 0  # (it did tile)
        assert psnr(whole, tiled) >= TINY_BOUND_DB[tile]


def test_a_call_with_vae_tile_size_is_labelled_and_close_to_the_whole_decode(pipe):
    job = dict(prompt="a fox", image=smooth_image(256, 3), strength=0.5, num_inference_steps=4)
    (whole,) = pipe(**job, seed=5)
    (tiled,) = pipe(**job, seed=5, vae_tile_size=192)
    assert tiled.info["fastimg:vae_tile_size"] == 192 and "fastimg:vae_tile_size" not in whole.info
    assert whole.tobytes() != tiled.tobytes()
    assert psnr(whole, tiled) >= TINY_BOUND_DB[192]


@pytest.mark.parametrize(
    "size,message",
    [
        (100, "vae_tile_size must be a multiple of 8 pixels .*: use 96 or 104"),
        (32, "vae_tile_size must be at least 64"),
        (128.0, "vae_tile_size must be a whole number"),
    ],
)
def test_bad_tile_sizes_are_refused_in_one_line_before_any_work(pipe, photo, size, message):
    with pytest.raises(InputError, match=message) as caught:
        pipe("a fox", photo, strength=0.5, num_inference_steps=4, vae_tile_size=size)
    assert "\n" not in str(caught.value)


def test_taesd_tiles_equal_the_whole_decode_but_for_rounding_at_the_seams(tiny_taesd):
    pipe = Img2ImgPipeline.from_engines(tiny_taesd[1], backend="onnxruntime", precision="fp32")
    pixels = to_pixels(smooth_image(256, 0), 8, 1024)
    z = pipe.encode_image(pixels, TorchCompatibleGenerator(0))
    decoder = pipe.sessions["vae_decoder"]
    whole = to_uint8(decode_tiled(decoder, z, None, 8))
    tiled = to_uint8(decode_tiled(decoder, z, 128, 8))
    assert psnr(whole, tiled) >= TAESD_BOUND_DB
