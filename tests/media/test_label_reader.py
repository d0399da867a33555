"""Reading the labels back (label_reader): fastimg's own outputs, A1111's files, other writers'
EXIF, files with no labels, C2PA presence, and damaged files."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fastimg.errors import InputError
from fastimg.media import labels
from fastimg.media.label_reader import read_labels
from tests.media.test_labels import SETTINGS, SUFFIXES, TRAINED, VERSION


@pytest.fixture
def noise():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,fmt", [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_read_labels_of_our_outputs(tmp_path, noise, suffix, fmt):
    settings = {**SETTINGS, "fastimg:prompt": "a fox\r\n<&> 狐", "fastimg:odd key/é": "x"}
    settings["fastimg:_x0041_"] = "a literal escape-like key"
    path = labels.save_image(noise, tmp_path / f"out.{suffix}", settings)
    assert read_labels(path) == {
        "format": fmt,
        "size": (64, 48),
        "parameters": labels.parameters_text(settings, (64, 48)),
        "digital_source_type": TRAINED,
        "creator_tool": f"fastimg {VERSION}",
        "fastimg": {key: str(value) for key, value in settings.items()},
        "c2pa": False,
    }


def a1111_text(prompt: str) -> str:
    return (
        f"{prompt}\nNegative prompt: ugly\nSteps: 30, Sampler: Euler a, CFG scale: 7, "
        "Seed: 965400086, Size: 512x512, Model hash: 45dee52b, Version: v1.10.1"
    )


def test_read_labels_of_an_a1111_png(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_text("girl with a beret, 狐"))
    Image.new("RGB", (40, 24)).save(tmp_path / "a1111.png", pnginfo=info)
    assert read_labels(tmp_path / "a1111.png") == {
        "format": "PNG",
        "size": (40, 24),
        "parameters": a1111_text("girl with a beret, 狐"),
        "digital_source_type": None,
        "creator_tool": None,
        "fastimg": {},
        "c2pa": False,
    }


@pytest.mark.parametrize(
    "endian,comment",
    [
        (">", lambda t: b"UNICODE\0" + t.encode("utf-16-be")),  # A1111 (piexif)
        ("<", lambda t: b"UNICODE\0" + t.encode("utf-16-le")),  # little-endian writers
        ("<", lambda t: b"ASCII\0\0\0" + t.encode("ascii", "replace")),
    ],
)
def test_read_labels_of_a_jpeg_with_a_user_comment(tmp_path, endian, comment):
    text = a1111_text("a castle, dusk")
    exif = Image.Exif()
    exif.endian = endian
    exif.get_ifd(0x8769)[0x9286] = comment(text)
    Image.new("RGB", (40, 24)).save(tmp_path / "other.jpg", exif=exif.tobytes())
    found = read_labels(tmp_path / "other.jpg")
    assert (found["format"], found["size"], found["parameters"]) == ("JPEG", (40, 24), text)
    assert (found["digital_source_type"], found["fastimg"], found["c2pa"]) == (None, {}, False)


@pytest.mark.parametrize("suffix", [*SUFFIXES, "gif", "bmp"])
def test_read_labels_of_a_file_without_any(tmp_path, suffix):
    Image.new("RGB", (20, 10)).save(tmp_path / f"plain.{suffix}")
    found = read_labels(tmp_path / f"plain.{suffix}")
    assert found["size"] == (20, 10)
    assert [found[k] for k in ("parameters", "digital_source_type", "creator_tool")] == [None] * 3
    assert found["fastimg"] == {} and found["c2pa"] is False


def png_with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:-12] + chunk + data[-12:]  # before IEND


def test_c2pa_manifests_are_noticed(tmp_path, noise):
    jumbf = b"\0\0\0\x20jumb\0\0\0\x18jumdc2pa\0\x11\0\x10\x80\0\xaa\0\x38\x9b\x71\x03c2pa\0"
    png = labels.save_image(noise, tmp_path / "out.png", SETTINGS).read_bytes()
    (tmp_path / "c2pa.png").write_bytes(png_with_chunk(png, b"caBX", jumbf))
    jpeg = labels.save_image(noise, tmp_path / "out.jpg", SETTINGS).read_bytes()
    app11 = b"\xff\xeb" + struct.pack(">H", 2 + 8 + len(jumbf)) + b"JP\0\x01\0\0\0\x01" + jumbf
    (tmp_path / "c2pa.jpg").write_bytes(jpeg[:2] + app11 + jpeg[2:])
    webp = labels.save_image(noise, tmp_path / "out.webp", SETTINGS).read_bytes()
    webp += b"C2PA" + struct.pack("<I", len(jumbf)) + jumbf + b"\0" * (len(jumbf) % 2)
    (tmp_path / "c2pa.webp").write_bytes(webp[:4] + struct.pack("<I", len(webp) - 8) + webp[8:])
    for suffix in SUFFIXES:
        assert read_labels(tmp_path / f"out.{suffix}")["c2pa"] is False
        found = read_labels(tmp_path / f"c2pa.{suffix}")
        assert found["c2pa"] is True and found["digital_source_type"] == TRAINED


def test_read_labels_reads_text_chunks_after_the_image_data(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    data = (tmp_path / "plain.png").read_bytes()
    body = b"parameters\0\0" + zlib.compress(b"late text\nSteps: 1, Sampler: DDIM, CFG scale: 1")
    (tmp_path / "late.png").write_bytes(png_with_chunk(data, b"zTXt", body))
    found = read_labels(tmp_path / "late.png")
    assert found["parameters"] == "late text\nSteps: 1, Sampler: DDIM, CFG scale: 1"


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "does not exist"),
        (b"hello, I am text", "not an image"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", "damaged"),
    ],
)
def test_read_labels_of_a_bad_file_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_labels(path)
    assert str(path) in str(info.value)
