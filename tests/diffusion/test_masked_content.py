"""What the masked region starts from (masked_content): A1111's init_latent fills, its
masking.fill, and the prepared mask and checks that carry them."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fastimg.diffusion import masks
from fastimg.diffusion.checks import check_values
from fastimg.diffusion.masked_content import fill, fill_latents
from fastimg.engine_folder.manifest import Manifest
from fastimg.errors import InputError
from fastimg.media import images
from fastimg.settings import CallSettings
from tests.manifests import complete


def a1111_init_latent(init_latent, latmask, noise, inpainting_fill: int):
    """StableDiffusionProcessingImg2Img.init's fill of init_latent (latmask: 1 repaints)."""
    mask, nmask = 1.0 - latmask, latmask  # A1111's self.mask and self.nmask
    if inpainting_fill == 2:
        return init_latent * mask + noise * nmask
    if inpainting_fill == 3:
        return init_latent * mask
    return init_latent


def test_the_latent_fills_are_a1111s_per_request():
    rng = np.random.default_rng(0)
    z, noise = (rng.standard_normal((4, 4, 8, 11)).astype(np.float32) for _ in range(2))
    mask = (rng.random((4, 1, 8, 11)) > 0.5).astype(np.float32)
    contents, counts = ["latent_noise", "original", "latent_nothing"], [2, 1, 1]
    got = fill_latents(z, mask, noise, contents, counts)
    fills = [2, 2, 1, 3]  # each image's request's inpainting_fill
    for row, inpainting_fill in enumerate(fills):
        expected = a1111_init_latent(z[row], mask[row], noise[row], inpainting_fill)
        assert np.array_equal(got[row], expected)
    assert got.dtype == np.float32
    assert not np.array_equal(got[0], z[0]) and not np.array_equal(got[3], z[3])
    assert fill_latents(z, mask, noise, ["original", "fill"], [2, 2]) is z  # nothing to fill


def test_fill_fills_the_masked_region_from_around_it():
    left = Image.new("RGB", (90, 68), (200, 20, 20))
    left.paste((20, 20, 200), (45, 0, 90, 68))  # red left half, blue right half
    mask = Image.new("L", left.size, 0)
    mask.paste(255, (30, 10, 60, 58))
    out = np.asarray(fill(left, mask)).astype(int)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(left)[outside])  # the image kept exactly
    assert out[34, 32, 0] > out[34, 32, 2] and out[34, 57, 2] > out[34, 57, 0]  # colours flow in
    assert 20 < out[34, 45, 0] < 200 and 20 < out[34, 45, 2] < 200  # mixed in the middle


@pytest.mark.parametrize("padding", [None, 4])
def test_fill_changes_the_pixels_the_engines_see_not_the_overlays(photo, padding):
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (30, 20, 60, 50))
    pixels = images.to_pixels(photo, 8)
    settings = CallSettings("x", mask_image=mask, keep_unmasked=True, padding_mask_crop=padding)
    plain = masks.prepare_mask(settings, pixels, 8, photo)
    filled = masks.prepare_mask(settings.with_values(masked_content="fill"), pixels, 8, photo)
    assert (plain.content, filled.content) == ("original", "fill")
    repainted = Image.fromarray((plain.pixels[0, 0] * 255).astype(np.uint8))
    kept = np.asarray(repainted.filter(ImageFilter.MaxFilter(11))) == 0  # (Lanczos lobes)
    assert np.array_equal(filled.image_pixels[0][:, kept], plain.image_pixels[0][:, kept])
    assert not np.array_equal(filled.image_pixels, plain.image_pixels)
    # the masked image (an inpainting UNet's) is the filled one, blacked out where repainted
    assert np.array_equal(filled.masked_pixels, filled.image_pixels * (filled.pixels < 0.5))
    original = np.asarray(plain.overlay[1])
    assert np.array_equal(np.asarray(filled.overlay[1]), original)  # pasted back: unfilled
    assert filled.labels()["fastimg:masked_content"] == "fill"
    assert "fastimg:masked_content" not in plain.labels()


def test_masked_content_is_checked_and_needs_a_mask():
    with pytest.raises(InputError, match="unknown masked_content 'noise': choose one of original"):
        check_values(CallSettings("x", masked_content="noise"))
    manifest = Manifest.from_data(None, complete({}))
    with pytest.raises(InputError, match=r"masked_content \(--masked-content\) shapes a mask"):
        masks.check_settings(manifest, CallSettings("x", masked_content="latent_noise"))
    mask = Image.new("L", (8, 8), 255)
    masks.check_settings(manifest, CallSettings("x", mask_image=mask, masked_content="fill"))
