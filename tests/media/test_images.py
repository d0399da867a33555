import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.media import images
from fastimg.media.images import load_image, to_pixels, to_uint8


def test_pixels_match_diffusers_preprocessing(photo):
    diffusers = pytest.importorskip("diffusers")
    processor = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=8)
    expected = processor.preprocess(photo).numpy()
    got = to_pixels(photo, 8)
    assert got.shape == expected.shape == (1, 3, 64, 88)
    np.testing.assert_array_equal(got, expected)


def test_uint8_matches_diffusers_postprocessing():
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).uniform(-1.3, 1.3, (2, 3, 16, 24)).astype(np.float32)
    processor = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=8)
    expected = np.stack([np.asarray(i) for i in processor.postprocess(torch.from_numpy(x))])
    np.testing.assert_array_equal(to_uint8(x), expected)


def test_uint8_images_come_c_ordered_so_pil_takes_their_buffer_as_it_is():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)
    images = to_uint8(x)
    assert images.shape == (2, 16, 24, 3) and images.flags.c_contiguous
    assert Image.fromarray(images[1]).getpixel((5, 3)) == tuple(images[1, 3, 5])


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "LA", "I;16"])
def test_other_modes_are_converted_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    image = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.random.default_rng(1).integers(0, 65535, (40, 48), dtype=np.uint16))
    )
    path = tmp_path / f"in.{'tiff' if mode == 'CMYK' else 'png'}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (48, 40)


def test_transparency_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    image.save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.new("RGB", (40, 24), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (24, 40)


@pytest.mark.parametrize(
    "content,message",
    [(b"", "not an image"), (b"hello, I am text", "not an image"), (None, "damaged or truncated")],
)
def test_unreadable_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is None:
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
        content = path.read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_too_small_image_is_rejected():
    with pytest.raises(InputError, match="too small"):
        to_pixels(Image.new("RGB", (15, 64)), 8)


def test_psnr():
    from fastimg.media.images import psnr

    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == float("inf")
    b[0, 0, 0] = 255  # mse = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(48))
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:2])


@pytest.mark.parametrize(
    "mode,top",
    [("I", 255), ("I", 65535), ("I", 2**31 - 1), ("I;16", 65535), ("F", 1.0), ("F", 255.0)],
)
def test_high_bit_depth_grayscale_is_scaled_by_its_range_not_clipped(mode, top):
    from fastimg.media.images import to_rgb

    ramp = np.linspace(0, top, 64, dtype=np.float64).reshape(1, 64).repeat(4, axis=0)
    dtype = {"I": np.int32, "I;16": np.uint16, "F": np.float32}[mode]
    image = Image.fromarray(ramp.astype(dtype), mode=mode if mode != "I;16" else None)
    if mode == "I;16":
        image = Image.frombytes("I;16", (64, 4), ramp.astype("<u2").tobytes())
    assert image.mode == mode
    gray = np.asarray(to_rgb(image))[..., 0].astype(int)
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    assert abs(gray[0, 32] - 130) <= 2  # mid-grey stays mid-grey (32/63 of white)
    assert len(np.unique(gray)) > 32  # a ramp, not black and white


def test_deep_grayscale_converts_without_a_float64_copy_of_the_whole_image():
    import tracemalloc

    side = 1024
    values = (np.arange(side * side, dtype=np.uint32) * 2654435761 % 65536).astype(np.uint16)
    image = Image.frombytes("I;16", (side, side), values.tobytes())
    tracemalloc.start()
    try:
        rgb = images.to_rgb(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = values.reshape(side, side).astype(np.float64) / 65535.0  # the old way, for reference
    expected = (whole.clip(0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(rgb)[..., 0], expected)  # the same pixels
    # 9 bytes a pixel: its 16-bit copy, the gray and RGB results (the whole-image float64 way
    # held 32.6, measured with the same tracemalloc count)
    assert peak < 12 * side * side
