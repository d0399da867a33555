"""Property-based fuzzing of image loading: mutated and random files never escape as a crash.

Whatever the bytes, load_image + to_pixels either give RGB pixels in [-1, 1] or raise
InputError; never another exception, never a hang (bounded example count and pixel limit).
"""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastimg.errors import InputError
from fastimg.media.images import load_image, to_pixels


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = [
    _encoded("PNG"),
    _encoded("PNG", "RGBA"),
    _encoded("PNG", "P"),
    _encoded("JPEG"),
    _encoded("GIF", "P"),
    _encoded("WEBP"),
    _encoded("BMP"),
    _encoded("TIFF"),
    _encoded("TIFF", "CMYK"),
]


@st.composite
def mutated_files(draw) -> bytes:
    """A valid image file, then truncated, bit-flipped, spliced, or plain random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random", "header"]))
    seed = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "truncate":
        return bytes(seed[: draw(st.integers(0, len(seed)))])
    if kind == "header":  # damage the first bytes, where sizes and modes are declared
        for _ in range(draw(st.integers(1, 6))):
            seed[draw(st.integers(0, min(63, len(seed) - 1)))] = draw(st.integers(0, 255))
        return bytes(seed)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 20))):
            seed[draw(st.integers(0, len(seed) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(seed)
    at = draw(st.integers(0, len(seed)))
    return bytes(seed[:at]) + draw(st.binary(max_size=256)) + bytes(seed[at:])


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated_files())
def test_any_bytes_load_as_rgb_or_raise_input_error(tmp_path, data):
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    try:
        pixels = to_pixels(load_image(path, max_pixels=4_000_000), 8, max_side=2048)
    except InputError as exc:
        assert str(exc)  # a message, not an empty error
        return
    assert pixels.dtype == np.float32 and pixels.shape[:2] == (1, 3)
    assert np.isfinite(pixels).all() and -1 <= pixels.min() <= pixels.max() <= 1


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_the_unmutated_seeds_load(tmp_path, index):
    path = tmp_path / "seed.img"
    path.write_bytes(SEEDS[index])
    assert load_image(path).size == (32, 24)
