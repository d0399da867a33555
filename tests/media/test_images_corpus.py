"""Every file of the hostile corpus is refused with a clear InputError; awkward ones load."""

import logging

import numpy as np
import pytest
from PIL import Image

from fastimg.errors import InputError
from fastimg.media.images import decode_image, load_image, parse_size, resize_to, to_pixels
from tests.corpus import awkward_images, bad_files, write

BAD = bad_files()
AWKWARD = awkward_images()


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory):
    return write(tmp_path_factory.mktemp("bad"), BAD)


@pytest.fixture(scope="module")
def awkward_paths(tmp_path_factory):
    return write(tmp_path_factory.mktemp("awkward"), AWKWARD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_are_refused_with_a_message_naming_the_problem(bad_paths, name):
    with pytest.raises(InputError, match=BAD[name][1]) as raised:
        to_pixels(load_image(bad_paths[name]), 8, max_side=2048)
    assert str(bad_paths[name]) in str(raised.value) or "pixels" in str(raised.value)


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_images_load_as_rgb(awkward_paths, name):
    image = load_image(awkward_paths[name])
    assert image.mode == "RGB" and image.size == AWKWARD[name][1]
    pixels = to_pixels(image, 8, max_side=2048)
    assert pixels.shape[0] == 1 and -1 <= pixels.min() <= pixels.max() <= 1


@pytest.mark.parametrize("name", ["animated-gif.gif", "animated-webp.webp"])
def test_animated_images_use_the_first_frame_and_say_so(awkward_paths, name, caplog):
    logger = logging.getLogger("fastimg")
    logger.addHandler(caplog.handler)
    try:
        image = load_image(awkward_paths[name])
    finally:
        logger.removeHandler(caplog.handler)
    assert "first frame" in caplog.text
    assert image.getpixel((16, 16))[0] > 200  # the first frame is the red one


def test_pixel_limit_is_configurable(awkward_paths):
    with pytest.raises(InputError, match="--max-pixels"):
        load_image(awkward_paths["rgba.png"], max_pixels=100)
    assert load_image(awkward_paths["rgba.png"], max_pixels=48 * 40).size == (48, 40)


def test_a_bomb_is_refused_before_it_is_decoded(bad_paths, monkeypatch):
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(InputError, match="over the limit"):
        load_image(bad_paths["small-bomb.png"])


# --- from bytes: decode_image is load_image for a file's bytes --------------------------------


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_bytes_are_refused_as_the_file_is_naming_the_upload(bad_paths, name):
    with pytest.raises(InputError) as from_file:
        to_pixels(load_image(bad_paths[name]), 8, max_side=2048)
    with pytest.raises(InputError) as from_bytes:
        to_pixels(decode_image(BAD[name][0], f"upload {name}"), 8, max_side=2048)
    expected = str(from_file.value).replace(str(bad_paths[name]), f"upload {name}")
    assert str(from_bytes.value) == expected


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_bytes_decode_as_the_file_loads(awkward_paths, name):
    image = decode_image(AWKWARD[name][0], name)
    assert image.mode == "RGB" and image.size == AWKWARD[name][1]
    assert np.array_equal(np.asarray(image), np.asarray(load_image(awkward_paths[name])))


def test_animated_bytes_use_the_first_frame_and_say_so(caplog):
    logger = logging.getLogger("fastimg")
    logger.addHandler(caplog.handler)
    try:
        image = decode_image(AWKWARD["animated-gif.gif"][0], "clip.gif")
    finally:
        logger.removeHandler(caplog.handler)
    assert "clip.gif is animated: using its first frame" in caplog.text
    assert image.getpixel((16, 16))[0] > 200


def test_bytes_over_the_pixel_limit_are_refused_from_the_header(monkeypatch):
    with pytest.raises(InputError, match="image big.png is 48x40, over the limit.*--max-pixels"):
        decode_image(AWKWARD["rgba.png"][0], "big.png", max_pixels=100)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(InputError, match="image bomb.png is .*over the limit"):
        decode_image(BAD["small-bomb.png"][0], "bomb.png")


@pytest.mark.parametrize(
    "text,expected", [("512", 512), ("768x512", (768, 512)), (" 64 X 32 ", (64, 32))]
)
def test_sizes_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "x", "512x", "-5", "1e3", "12x34x56", "big", "5121234567"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InputError, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_resize_keeps_the_aspect_for_one_number():
    image = Image.new("RGB", (300, 200))
    assert resize_to(image, 150).size == (150, 100)
    assert resize_to(image, (64, 96)).size == (64, 96)
    assert resize_to(image, (300, 200)) is image
