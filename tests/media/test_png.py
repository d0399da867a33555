"""fastimg's PNG encoder: the pixels and chunks Pillow reads back, every filter's rows, and
Pillow's encoder for the modes it leaves to it."""

import io
import os
import select
import signal
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fastimg.media import png
from fastimg.media.labels import encode_image, save_image
from tests.media.test_labels import SETTINGS


def _read(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # (checks every chunk's CRC and the data's length)
    return image


def _structured(shape, seed=0) -> np.ndarray:
    """Pixels where each filter wins somewhere: flat rows, horizontal and vertical ramps, noise."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random(shape) * 255).astype(np.uint8)
    h, w = shape[:2]
    across = np.arange(w, dtype=np.uint8).reshape((1, w) + (1,) * (len(shape) - 2))
    down = np.arange(h, dtype=np.uint8).reshape((h, 1) + (1,) * (len(shape) - 2))
    pixels[: h // 4] = 7
    pixels[h // 4 : h // 2] = np.broadcast_to(across, pixels[h // 4 : h // 2].shape)
    pixels[h // 2 : 3 * h // 4] = np.broadcast_to(
        down[h // 2 : 3 * h // 4], pixels[h // 2 : 3 * h // 4].shape
    )
    return pixels


@pytest.mark.parametrize(
    "mode,shape",
    [("RGB", (512, 512, 3)), ("RGBA", (97, 130, 4)), ("L", (200, 333)), ("L", (1, 1)),
     ("RGB", (1, 5, 3)), ("RGB", (130, 1, 3)), ("RGBA", (65, 64, 4))],
)  # fmt: skip
def test_pillow_reads_back_the_same_pixels_in_the_same_mode(mode, shape):
    pixels = _structured(shape)
    back = _read(png.encode(Image.fromarray(pixels)))
    assert back.format == "PNG" and back.mode == mode and back.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(back), pixels)


def test_rows_are_filtered_by_none_sub_and_up_each_where_it_pays():
    data = png.encode(Image.fromarray(_structured((256, 256, 3))))
    start = data.index(b"IDAT") + 4
    (length,) = np.frombuffer(data[start - 8 : start - 4], ">u4")
    raw = np.frombuffer(zlib.decompress(data[start : start + int(length)]), np.uint8)
    filters = set(raw.reshape(256, 256 * 3 + 1)[:, 0].tolist())
    assert filters == {png.NONE, png.SUB, png.UP}


def test_the_chunks_are_those_pillow_writes_and_reads():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red fox\nSteps: 2")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>é</x:xmpmeta>")
    info.add_text("comment", "ünïcode", zip=True)
    info.add(b"prVt", b"before the pixels")
    info.add(b"prVa", b"after them", after_idat=True)
    data = png.encode(Image.new("RGB", (16, 8), (10, 200, 30)), info)
    assert _read(data).text == {
        "parameters": "a red fox\nSteps: 2",
        "XML:com.adobe.xmp": "<x:xmpmeta>é</x:xmpmeta>",
        "comment": "ünïcode",
    }
    assert data.index(b"prVt") < data.index(b"IDAT") < data.index(b"prVa") < data.index(b"IEND")
    pillows = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 200, 30)).save(pillows, "PNG", pnginfo=info)
    assert _read(pillows.getvalue()).text == _read(data).text


def test_files_stay_near_pillows_size_at_level_1():
    y, x = np.mgrid[0:512, 0:512] / 512
    waves = [np.sin(9 * x + 5 * y), np.cos(23 * x * y), np.sin(11 * x) * np.cos(7 * y)]
    photo_like = ((np.stack(waves, -1) * 0.5 + 0.5) * 255).astype(np.uint8)
    for pixels in (photo_like, _structured((512, 512, 3))):
        image = Image.fromarray(pixels)
        pillows = io.BytesIO()
        image.save(pillows, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
        assert len(png.encode(image)) <= 1.2 * len(pillows.getvalue())


def test_other_modes_are_refused_by_name():
    with pytest.raises(ValueError, match="I;16 images are written by Pillow"):
        png.encode(Image.new("I;16", (4, 4)))


@pytest.mark.parametrize("mode", ["1", "LA", "I;16"])
def test_labelled_files_in_other_modes_are_still_written_by_pillow(tmp_path, mode):
    image = Image.new(mode, (24, 16), 1)
    written = save_image(image, tmp_path / "out.png", SETTINGS)
    back = Image.open(written)
    assert back.mode == mode and "a red fox" in back.text["parameters"]
    assert _read(encode_image(image, SETTINGS, "png")).mode == mode


def test_a_32_bit_grey_image_is_written_in_16_bits(tmp_path):
    values = np.array([[0, 1, 300, 65535, 70000, -4]], np.int32)  # PNG has no 32-bit samples
    written = save_image(Image.fromarray(values), tmp_path / "out.png", SETTINGS)
    back = Image.open(written)
    assert back.mode == "I;16" and "a red fox" in back.text["parameters"]
    assert np.asarray(back).tolist() == [[0, 1, 300, 65535, 65535, 0]]


def test_labelled_rgb_files_are_written_by_this_encoder(tmp_path):
    image = Image.fromarray(_structured((64, 48, 3)))
    written = save_image(image, tmp_path / "out.png", SETTINGS)
    data = written.read_bytes()
    assert data.count(b"IDAT") == 1  # (Pillow splits its data into 64 KiB chunks and more)
    assert np.array_equal(np.asarray(_read(data)), np.asarray(image))
    assert "a red fox" in _read(data).text["parameters"]


@pytest.mark.parametrize("height", [png.PIECE_ROWS - 1, png.PIECE_ROWS, 2 * png.PIECE_ROWS + 45])
def test_pieces_deflated_on_threads_make_the_same_file_as_on_one(monkeypatch, height):
    image = Image.fromarray(_structured((height, 96, 3), seed=height))
    monkeypatch.setattr(png, "available_cores", lambda: 2)
    threaded = png.encode(image)
    monkeypatch.setattr(png, "available_cores", lambda: 1)
    assert png.encode(image) == threaded
    assert np.array_equal(np.asarray(_read(threaded)), np.asarray(image))
    start = threaded.index(b"IDAT") + 4
    (length,) = np.frombuffer(threaded[start - 8 : start - 4], ">u4")
    # (zlib checks the stream's checksum over all the pieces' rows as it ends)
    rows = zlib.decompress(threaded[start : start + int(length)])
    assert len(rows) == height * (96 * 3 + 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_forked_child_deflates_on_threads_of_its_own():
    image = Image.fromarray(_structured((2 * png.PIECE_ROWS, 64, 3)))
    expected = png.encode(image)  # (the parent's pool has started)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a child that hung on its parent's threads would never write
        os.write(write, b"1" if png.encode(image) == expected else b"0")
        os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        assert ready and os.read(read, 1) == b"1"
    finally:
        os.kill(child, signal.SIGKILL)  # (a hung child is not left behind)
        os.waitpid(child, 0)


def test_zlib_ng_and_zlib_write_the_same_file(monkeypatch):
    pytest.importorskip("zlib_ng")
    assert png.deflating is not zlib  # (a dependency: the speed is what it is there for)
    image = Image.fromarray(_structured((png.PIECE_ROWS + 9, 130, 3)))
    with_ng = png.encode(image)
    monkeypatch.setattr(png, "deflating", zlib)
    assert png.encode(image) == with_ng
