"""AI-generated labels per output format, checked with readers that are not ours: pyexiv2
(exiv2), exiftool where installed, A1111's parsing logic, and the file bytes themselves."""

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image, ImageCms

from fastimg.errors import InputError, OutputError
from fastimg.media import labels, vocabulary
from fastimg.media.label_reader import read_labels

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
VERSION = vocabulary.version()
SUFFIXES = ["png", "jpg", "webp"]
SETTINGS = {
    "fastimg:prompt": "a red fox in the snow",
    "fastimg:negative_prompt": "blurry",
    "fastimg:seed": 1234,
    "fastimg:strength": 0.5,
    "fastimg:steps": 20,
    "fastimg:guidance": 7.5,
    "fastimg:scheduler": "dpmpp_2m_karras",
    "fastimg:backend": "onnxruntime",
    "fastimg:precision": "fp32",
    "fastimg:model": "sd15",
    "fastimg:model_hash": "6ce0161689",
    "fastimg:index": 0,
    "fastimg:source": "fox.jpg",
}
EXPECTED_TEXT = (
    "a red fox in the snow\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 64x48, "
    f"Model hash: 6ce0161689, Model: sd15, Denoising strength: 0.5, Version: fastimg {VERSION}"
)


@pytest.fixture
def noise():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def exiv2():
    return pytest.importorskip("pyexiv2")


def exiv2_read(exiv2, path):
    with exiv2.Image(str(path)) as image:
        return image.read_xmp(), image.read_exif(), image.read_comment()


# --- independent readers -----------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each PNG chunk, checking each CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of each JPEG segment before the scan."""
    assert data[:2] == b"\xff\xd8"
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        marker, (length,) = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((marker, data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segments


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    chunks, pos = [], 12
    while pos < len(data):
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (length & 1)
    return chunks


RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_generation_parameters(x: str) -> dict:
    """A1111's modules/infotext_utils.py parse_generation_parameters, its parsing part."""
    res, prompt, negative_prompt, done_with_prompt = {}, "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            try:
                v = json.loads(v)  # A1111's unquote
            except ValueError:
                pass
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


# --- the A1111 text ----------------------------------------------------------------------------


def test_parameters_text_is_what_a1111_writes():
    assert labels.parameters_text(SETTINGS, (64, 48)) == EXPECTED_TEXT


def test_parameters_text_without_negative_prompt_or_model():
    settings = {**SETTINGS, "fastimg:negative_prompt": "", "fastimg:guidance": 7.0}
    settings.update({"fastimg:strength": 0.75, "fastimg:scheduler": "euler_a"})
    del settings["fastimg:model"], settings["fastimg:model_hash"]
    assert labels.parameters_text(settings, (512, 768)) == (
        "a red fox in the snow\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768, "
        f"Denoising strength: 0.75, Version: fastimg {VERSION}"
    )


def test_parameters_text_has_a_controlnet_as_a1111s_extension_writes_it():
    control = {"fastimg:control_preprocess": "canny", "fastimg:control_scale": 0.8,
               "fastimg:control_start": 0.0, "fastimg:control_end": 0.75}  # fmt: skip
    text = labels.parameters_text({**SETTINGS, **control}, (64, 48))
    assert 'ControlNet 0: "preprocessor: canny, weight: 0.8, starting/ending: (0, 0.75)"' in text
    parsed = parse_generation_parameters(text)  # A1111 reads it back as one field
    assert parsed["ControlNet 0"] == "preprocessor: canny, weight: 0.8, starting/ending: (0, 0.75)"
    assert parsed["Version"] == f"fastimg {VERSION}"
    assert "ControlNet" not in labels.parameters_text(SETTINGS, (64, 48))
    named = {**SETTINGS, **control, "fastimg:control_model": "sd-controlnet-canny, v1: x"}
    text = labels.parameters_text(named, (64, 48))
    assert 'ControlNet 0: "preprocessor: canny, model: sd-controlnet-canny_ v1_ x, weight:' in text


def test_parameters_text_has_the_mask_settings_as_a1111_writes_them():
    masked = {
        **SETTINGS,
        "fastimg:mask": "given",
        "fastimg:mask_blur": 4,
        "fastimg:mask_padding": 32,
    }
    text = labels.parameters_text(masked, (64, 48))
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32" in text
    parsed = parse_generation_parameters(text)
    assert parsed["Inpaint area"] == "Only masked" and parsed["Masked area padding"] == "32"
    plain = labels.parameters_text({**SETTINGS, "fastimg:mask": "given"}, (64, 48))
    assert "Mask blur" not in plain and "Inpaint area" not in plain


def test_parameters_text_has_one_field_per_controlnet():
    control = {"fastimg:control_preprocess": "none", "fastimg:control_scale": [0.5, 1.25],
               "fastimg:control_start": [0.0, 0.3], "fastimg:control_end": [1.0, 0.9],
               "fastimg:control_model": ["canny", "depth"]}  # fmt: skip
    parsed = parse_generation_parameters(labels.parameters_text({**SETTINGS, **control}, (64, 48)))
    assert parsed["ControlNet 0"] == (
        "preprocessor: none, model: canny, weight: 0.5, starting/ending: (0, 1)"
    )
    assert parsed["ControlNet 1"] == (
        "preprocessor: none, model: depth, weight: 1.25, starting/ending: (0.3, 0.9)"
    )
    assert parsed["Version"] == f"fastimg {VERSION}"


@pytest.mark.parametrize(
    "scheduler,name",
    [
        ("ddim", "DDIM"),
        ("euler", "Euler"),
        ("euler_a", "Euler a"),
        ("dpmpp_2m", "DPM++ 2M"),
        ("dpmpp_2m_karras", "DPM++ 2M Karras"),
        ("lcm", "LCM"),
    ],
)
def test_sampler_names_are_a1111s(scheduler, name):
    text = labels.parameters_text({**SETTINGS, "fastimg:scheduler": scheduler}, (64, 48))
    assert parse_generation_parameters(text)["Sampler"] == name


@pytest.mark.parametrize(
    "prompt,negative,model",
    [
        ("masterpiece, (fox:1.2), snow", "lowres, bad anatomy", "my model, v2: final"),
        ('a sign that says "hello, world"', 'no "text"', 'model "quoted"'),
        ("first line\nsecond line: with colon\nthird, with comma", "one\ntwo", '"leading'),
        ("狐, 雪 — ünïcödé", "", "sd15"),
        ("BREAK: (a:1.1), [b|c], {d}", "x: y", 'a\\b "c", d: e'),
    ],
)
def test_a1111_parser_reads_back_every_value(prompt, negative, model):
    settings = {**SETTINGS, "fastimg:prompt": prompt, "fastimg:negative_prompt": negative}
    settings.update({"fastimg:model": model, "fastimg:guidance": 5, "fastimg:strength": "0.30"})
    parsed = parse_generation_parameters(labels.parameters_text(settings, (640, 480)))
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative
    assert parsed["Model"] == model and parsed["Model hash"] == "6ce0161689"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"]) == (
        "20",
        "DPM++ 2M Karras",
        "5",
    )
    assert (parsed["Seed"], parsed["Size-1"], parsed["Size-2"]) == ("1234", "640", "480")
    assert parsed["Denoising strength"] == "0.3" and parsed["Version"] == f"fastimg {VERSION}"


@pytest.mark.parametrize(
    "prompt,negative",
    [
        ("a cat\nNegative prompt: spoofed", ""),
        ("Negative prompt: all of it", ""),
        ("a cat\n   Negative prompt: indented", "blurry"),
        ("a cat", "lowres\nNegative prompt: inside the negative"),
    ],
)
def test_a_prompt_cannot_forge_the_negative_prompt_a1111_reads(prompt, negative):
    settings = {**SETTINGS, "fastimg:prompt": prompt, "fastimg:negative_prompt": negative}
    parsed = parse_generation_parameters(labels.parameters_text(settings, (64, 48)))
    assert parsed["Negative prompt"].replace("\u200b", "") == negative
    assert parsed["Prompt"].replace("\u200b", "") == prompt
    assert parsed["Seed"] == "1234"  # the settings line is still the settings line


# --- XMP ---------------------------------------------------------------------------------------


def test_xmp_packet_is_well_formed_and_escaped():
    prompt = "<b>bold</b> & 'single' \"double\" ]]> 狐 🦊\r\nnext\x07bell"
    settings = {**SETTINGS, "fastimg:prompt": prompt, "fastimg:odd key/é": "v", "other": "no"}
    packet = labels.xmp_packet(settings)
    assert packet.startswith(b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>')
    assert packet.endswith(b'<?xpacket end="w"?>')
    root = ElementTree.fromstring(packet)
    rdf = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
    (description,) = root.iter(f"{rdf}Description")
    found = {child.tag: child.text for child in description}
    assert found["{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"] == TRAINED
    assert found["{http://ns.adobe.com/xap/1.0/}CreatorTool"] == f"fastimg {VERSION}"
    ns = f"{{{vocabulary.FASTIMG_NS}}}"
    assert found[f"{ns}prompt"] == prompt.replace("\x07", "\ufffd")  # XML cannot hold a BEL
    assert found[f"{ns}seed"] == "1234" and found[f"{ns}source"] == "fox.jpg"
    assert not any(tag.endswith("}other") for tag in found)  # only fastimg:* settings


# --- writing, read by others -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_exiv2_sees_source_type_creator_tool_and_settings(tmp_path, noise, exiv2, suffix):
    path = labels.save_image(noise, tmp_path / f"out.{suffix}", SETTINGS)
    xmp, exif, _ = exiv2_read(exiv2, path)
    assert xmp["Xmp.iptcExt.DigitalSourceType"] == TRAINED
    assert xmp["Xmp.xmp.CreatorTool"] == f"fastimg {VERSION}"
    assert xmp["Xmp.fastimg.prompt"] == SETTINGS["fastimg:prompt"]
    if suffix != "png":  # A1111 keeps JPEG and WebP parameters in EXIF UserComment
        assert exif["Exif.Photo.UserComment"] == f"charset=Unicode {EXPECTED_TEXT}"
        assert exif["Exif.Image.Software"] == f"fastimg {VERSION}"


def tiff_entries(tiff: bytes, offset: int) -> dict[int, tuple[int, bytes]]:
    """tag -> (type, value bytes) of the big-endian TIFF IFD at `offset`."""
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 7: 1}
    (count,) = struct.unpack(">H", tiff[offset : offset + 2])
    entries = {}
    for i in range(count):
        entry = tiff[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, kind, n = struct.unpack(">HHI", entry[:8])
        size = sizes[kind] * n
        at = struct.unpack(">I", entry[8:])[0] if size > 4 else None
        entries[tag] = (kind, tiff[at : at + size] if at is not None else entry[8 : 8 + size])
    return entries


@pytest.mark.parametrize("suffix", ["jpg", "webp"])
def test_user_comment_is_a1111s_bytes(tmp_path, noise, exiv2, suffix):
    """piexif's UserComment.dump(text, encoding="unicode") in a big-endian EXIF, typed UNDEFINED
    (piexif, A1111's reader, returns UNDEFINED as bytes but BYTE as a tuple of ints)."""
    settings = {**SETTINGS, "fastimg:prompt": "fox, 狐 — ünïcödé"}
    path = labels.save_image(noise, tmp_path / f"out.{suffix}", settings)
    data = path.read_bytes()
    if suffix == "jpg":
        (exif,) = [p for m, p in jpeg_segments(data) if m == 0xE1 and p.startswith(b"Exif\0\0")]
        tiff = exif[6:]
    else:
        (tiff,) = [body for kind, body in webp_chunks(data) if kind == b"EXIF"]
    assert tiff[:8] == b"MM\0*\0\0\0\x08"
    ifd0 = tiff_entries(tiff, 8)
    assert ifd0[0x0131] == (2, f"fastimg {VERSION}\0".encode())  # Software, ASCII
    kind, pointer = ifd0[0x8769]  # the Exif IFD, LONG
    text = labels.parameters_text(settings, (64, 48))
    comment = tiff_entries(tiff, struct.unpack(">I", pointer)[0])[0x9286]
    assert comment == (7, b"UNICODE\0" + text.encode("utf-16-be")) and kind == 4
    with exiv2.Image(str(path)) as image:
        detail = image.read_exif_detail()["Exif.Photo.UserComment"]
    assert detail["typeName"] == "Undefined" and detail["value"] == f"charset=Unicode {text}"


def test_png_chunks_at_the_byte_level(tmp_path, noise):
    path = labels.save_image(noise, tmp_path / "out.png", SETTINGS)
    chunks = png_chunks(path.read_bytes())
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    before_idat = chunks[: kinds.index(b"IDAT")]
    assert (b"tEXt", b"parameters\0" + EXPECTED_TEXT.encode("latin-1")) in before_idat
    itxt = dict(body.split(b"\0\0\0\0\0", 1) for kind, body in before_idat if kind == b"iTXt")
    assert itxt[b"XML:com.adobe.xmp"] == labels.xmp_packet(SETTINGS)
    for key, value in SETTINGS.items():
        assert itxt[key.encode()] == str(value).encode()
    assert Image.open(path).text["fastimg:seed"] == "1234"  # as fastimg wrote them before labels


def test_png_parameters_beyond_latin1_go_in_itxt_as_a1111_writes_them(tmp_path, noise):
    settings = {**SETTINGS, "fastimg:prompt": "狐 in the snow"}
    path = labels.save_image(noise, tmp_path / "out.png", settings)
    bodies = [body for kind, body in png_chunks(path.read_bytes()) if kind == b"iTXt"]
    text = labels.parameters_text(settings, (64, 48))
    assert b"parameters\0\0\0\0\0" + text.encode("utf-8") in bodies


@pytest.mark.parametrize("suffix,tag", [("png", "Parameters"), ("jpg", "UserComment")])
def test_exiftool_sees_the_parameters(tmp_path, noise, suffix, tag):
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (apt-get install libimage-exiftool-perl)")
    path = labels.save_image(noise, tmp_path / f"out.{suffix}", SETTINGS)
    run = subprocess.run(["exiftool", "-j", str(path)], capture_output=True, text=True, check=True)
    (found,) = json.loads(run.stdout)
    assert found[tag] == EXPECTED_TEXT
    assert found["DigitalSourceType"] == TRAINED and found["CreatorTool"] == f"fastimg {VERSION}"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_no_metadata_leaves_none_even_from_the_images_info(tmp_path, noise, exiv2, suffix):
    exif = Image.Exif()
    exif[0x0131] = "some camera app"
    noise.info = {
        "parameters": "old prompt",
        "fastimg:seed": 9,
        "icc_profile": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        "exif": exif.tobytes(),
        "xmp": labels.xmp_packet(SETTINGS),
        "comment": b"a JPEG comment",
        "transparency": (0, 0, 0),
    }
    path = labels.save_image(noise, tmp_path / f"out.{suffix}", SETTINGS, metadata=False)
    assert exiv2_read(exiv2, path) == ({}, {}, "")
    data = path.read_bytes()
    if suffix == "png":
        assert {kind for kind, _ in png_chunks(data)} == {b"IHDR", b"IDAT", b"IEND"}
    elif suffix == "jpg":
        assert not {m for m, _ in jpeg_segments(data)} & {0xE1, 0xE2, 0xEB, 0xFE}  # APPn, COM
    else:
        assert [kind for kind, _ in webp_chunks(data)] == [b"VP8 "]
    found = read_labels(path)
    assert (found["parameters"], found["digital_source_type"], found["fastimg"]) == (None, None, {})


def test_quality_changes_jpeg_and_webp_size(tmp_path, noise):
    for suffix in ("jpg", "webp"):
        low = labels.save_image(noise, tmp_path / f"low.{suffix}", SETTINGS, quality=10)
        default = labels.save_image(noise, tmp_path / f"default.{suffix}", SETTINGS)
        high = labels.save_image(noise, tmp_path / f"high.{suffix}", SETTINGS, quality=95)
        assert low.stat().st_size < default.stat().st_size == high.stat().st_size
    same = [labels.save_image(noise, tmp_path / f"{q}.png", SETTINGS, quality=q) for q in (5, 99)]
    assert same[0].read_bytes() == same[1].read_bytes()  # PNG ignores quality


@pytest.mark.parametrize("quality", [0, 101, 50.5, True])
def test_quality_out_of_range_is_refused(tmp_path, noise, quality):
    with pytest.raises(InputError, match="quality"):
        labels.save_image(noise, tmp_path / "out.jpg", SETTINGS, quality=quality)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.bmp", "out.gif", "out.tif", "out", "out.PNG.txt"])
def test_unsupported_formats_are_refused_with_the_ones_that_are_written(tmp_path, noise, name):
    with pytest.raises(InputError) as info:
        labels.save_image(noise, tmp_path / name, SETTINGS)
    message = str(info.value)
    assert str(tmp_path / name) in message and "labels" in message
    assert all(fmt in message for fmt in ("PNG", "JPEG", "WebP"))
    assert list(tmp_path.iterdir()) == []


def test_output_format_from_argument_or_suffix(tmp_path):
    assert [labels.output_format(f"a{s}") for s in (".png", ".JPG", ".jpeg", ".WebP")] == [
        "PNG",
        "JPEG",
        "JPEG",
        "WEBP",
    ]
    assert labels.output_format("a.bmp", "JPG") == "JPEG"
    assert labels.output_format("noext", "webp") == "WEBP"
    with pytest.raises(InputError, match="'tiff'.*PNG.*JPEG.*WebP"):
        labels.output_format("a.png", "tiff")


def test_a_failed_write_is_an_output_error_leaving_nothing(tmp_path, noise, monkeypatch):
    old = labels.save_image(noise, tmp_path / "out.jpg", SETTINGS).read_bytes()

    def disk_full(fp, *args, **kwargs):
        fp.write(b"half an image")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(labels, "_encode_into", disk_full)  # (Pillow's and fastimg's encoders)
    for name in ("out.jpg", "new.png"):
        with pytest.raises(OutputError) as info:
            labels.save_image(noise, tmp_path / name, SETTINGS)
        assert str(tmp_path / name) in str(info.value) and "No space left" in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]  # no temporary, no new.png
    assert (tmp_path / "out.jpg").read_bytes() == old


def test_a_destination_that_cannot_exist_is_an_output_error(tmp_path, noise):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write .*file/sub/out.png"):
        labels.save_image(noise, tmp_path / "file" / "sub" / "out.png", SETTINGS)


def test_a_read_only_folder_is_an_output_error(tmp_path, noise):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        message = _save_as_a_user(noise, folder / "out.png")
        assert message.startswith("OutputError") and "Permission denied" in message
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def _save_as_a_user(image, path) -> str:
    """save_image's outcome ('ok' or 'ErrorType: message') in a child process that runs as an
    ordinary user (nobody, where the tests run as root, who writes into read-only folders)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's exit handlers
        os.close(read)
        try:
            if os.geteuid() == 0:
                for parent in path.parents[1:]:  # let nobody reach the folder, not write in it
                    if not parent.stat().st_mode & 0o001:
                        parent.chmod(parent.stat().st_mode | 0o005)
                os.setgid(65534)
                os.setuid(65534)
            labels.save_image(image, path, SETTINGS)
            outcome = "ok"
        except BaseException as exc:  # noqa: BLE001 (any outcome is reported)
            outcome = f"{type(exc).__name__}: {exc}"
        os.write(write, outcome.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    return outcome


def test_parent_folders_are_created_and_no_temporary_is_left(tmp_path, noise):
    path = labels.save_image(noise, tmp_path / "a" / "b" / "out.webp", SETTINGS)
    assert path == tmp_path / "a" / "b" / "out.webp"
    assert [p.name for p in path.parent.iterdir()] == ["out.webp"]


@pytest.mark.parametrize("suffix,mode", [("jpg", "RGB"), ("webp", "RGBA"), ("png", "RGBA")])
def test_alpha_is_kept_where_the_format_holds_it(tmp_path, suffix, mode):
    image = Image.new("RGBA", (32, 16), (10, 20, 30, 0))
    path = labels.save_image(image, tmp_path / f"out.{suffix}", SETTINGS)
    with Image.open(path) as saved:
        assert saved.mode == mode
        if suffix == "jpg":  # JPEG has no alpha: transparency goes onto white
            assert np.asarray(saved).min() > 240


def test_sixteen_bit_grayscale_is_written_as_jpeg(tmp_path):
    image = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
    path = labels.save_image(image, tmp_path / "out.jpg", SETTINGS)
    assert read_labels(path)["parameters"] == labels.parameters_text(SETTINGS, (16, 16))


def test_labels_too_long_for_a_jpeg_segment_are_refused(tmp_path, noise):
    settings = {**SETTINGS, "fastimg:prompt": "fox " * 9000}
    with pytest.raises(InputError, match="64 KiB.*PNG or WebP"):
        labels.save_image(noise, tmp_path / "out.jpg", settings)
    assert (
        read_labels(labels.save_image(noise, tmp_path / "out.webp", settings))["fastimg"][
            "fastimg:prompt"
        ]
        == settings["fastimg:prompt"]
    )


def test_text_that_cannot_be_encoded_is_replaced_not_fatal(tmp_path, noise):
    settings = {**SETTINGS, "fastimg:prompt": "fox\udcff"}  # an undecodable argv byte
    for suffix in SUFFIXES:
        found = read_labels(labels.save_image(noise, tmp_path / f"o.{suffix}", settings))
        assert found["fastimg"]["fastimg:prompt"] == "fox\ufffd"


# --- in memory: encode_image writes the bytes save_image writes --------------------------------


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.jpeg", "out.webp"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
@pytest.mark.parametrize("metadata", [True, False])
def test_encode_image_gives_the_bytes_save_image_writes(tmp_path, noise, name, mode, metadata):
    image = noise.convert(mode)
    image.info["icc_profile"] = b"not carried"
    for quality in (None, 40):
        saved = labels.save_image(image, tmp_path / name, SETTINGS, None, quality, metadata)
        by_name = labels.encode_image(image, SETTINGS, None, quality, metadata, name=name)
        fmt = labels.output_format(name).lower()
        by_format = labels.encode_image(image, SETTINGS, fmt, quality, metadata)
        assert by_name == by_format == saved.read_bytes()


def test_encode_image_signs_what_save_image_signs(tmp_path, noise, monkeypatch):
    calls = []

    def sign_image(signer, data, fmt, settings, title=None):
        calls.append((signer, data, fmt, settings, title))
        return b"signed:" + data

    monkeypatch.setattr(labels, "sign_image", sign_image)
    for name in ("out.png", "out.jpg", "out.webp"):
        for metadata in (True, False):
            calls.clear()
            saved = labels.save_image(
                noise, tmp_path / name, SETTINGS, signer="s", metadata=metadata
            )
            encoded = labels.encode_image(noise, SETTINGS, signer="s", metadata=metadata, name=name)
            assert encoded == saved.read_bytes() and encoded.startswith(b"signed:")
            assert calls[0] == calls[1] and calls[0][3] == (SETTINGS if metadata else {})
            assert calls[0][4] == name
    labels.encode_image(noise, SETTINGS, "webp", signer="s")
    assert calls[-1][4] is None  # sign_image then titles it image.webp


def test_encode_image_refuses_what_save_image_refuses(noise):
    with pytest.raises(InputError, match="cannot write the image: format 'gif' is not one"):
        labels.encode_image(noise, SETTINGS, "gif")
    with pytest.raises(InputError, match="cannot write the image: the name has no suffix"):
        labels.encode_image(noise, SETTINGS)
    with pytest.raises(InputError, match="quality 0 is not a whole number"):
        labels.encode_image(noise, SETTINGS, "jpeg", quality=0)
    long = {**SETTINGS, "fastimg:prompt": "fox " * 20000}
    with pytest.raises(InputError, match="cannot write upload.jpg: its labels .* over the 64 KiB"):
        labels.encode_image(noise, long, "jpeg", name="upload.jpg")


def test_parameters_text_names_the_loras_in_the_prompt_as_a1111_does():
    text = labels.parameters_text({**SETTINGS, "fastimg:loras": "ink:0.8, oil:1"}, (64, 48))
    assert text.splitlines()[0].endswith(" <lora:ink:0.8> <lora:oil:1>")
    assert "<lora:" not in labels.parameters_text(SETTINGS, (64, 48))


def test_parameters_text_lists_the_loras_hashes_as_a1111_does():
    settings = {**SETTINGS, "fastimg:loras": "ink:0.8, oil:1",
                "fastimg:lora_hashes": "ink: 0123456789ab, oil: ba9876543210"}  # fmt: skip
    line = labels.parameters_text(settings, (64, 48)).splitlines()[-1]
    assert 'Lora hashes: "ink: 0123456789ab, oil: ba9876543210", Version: fastimg' in line
    assert "Lora hashes" not in labels.parameters_text(SETTINGS, (64, 48))


def test_pngs_are_written_fast_and_lossless_and_as_small_as_pillows_default_on_a_photo(tmp_path):
    # A photograph-like image: smooth shapes under sensor noise.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128] / 128
    waves = np.stack([np.sin(5 * x + 3 * y), np.cos(17 * x * y), np.sin(7 * x)], -1) * 0.5 + 0.5
    pixels = (np.clip(waves + rng.normal(0, 0.02, waves.shape), 0, 1) * 255).astype(np.uint8)
    photo = Image.fromarray(pixels)
    path = labels.save_image(photo, tmp_path / "out.png", SETTINGS, metadata=False)
    photo.save(tmp_path / "default.png")
    assert np.array_equal(np.asarray(Image.open(path)), pixels)
    idat = b"".join(body for kind, body in png_chunks(path.read_bytes()) if kind == b"IDAT")
    assert zlib.decompress(idat)  # (a valid zlib stream, however it was matched)
    assert idat[1] >> 6 == 0  # FLEVEL 0: deflated at the fastest level (RFC 1950)
    assert path.stat().st_size <= 1.02 * (tmp_path / "default.png").stat().st_size
