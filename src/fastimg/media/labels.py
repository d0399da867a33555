"""Labels that mark an output as AI-generated, each in its format's own place, and reading them.

PNG: the A1111 `parameters` text chunk, XMP in the `XML:com.adobe.xmp` iTXt chunk, and each
`fastimg:*` setting as its own iTXt chunk. JPEG and WebP: the A1111 text in EXIF UserComment
(where A1111 puts it) and XMP. The XMP carries IPTC's digital source type (trained algorithmic
media), the creator tool and the fastimg settings.
"""

import functools
import importlib.metadata
import io
import json
import re
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from PIL import ExifTags, Image, PngImagePlugin, UnidentifiedImageError

from ..atomic import write_atomically
from ..errors import InputError, OutputError

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
FASTIMG_NS = "urn:fastimg:settings:1.0/"
PNG_XMP_KEY = "XML:com.adobe.xmp"

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 95}
# Modes each format stores as they are; any other mode is converted to RGB (alpha onto white).
STORED_MODES = {
    "PNG": {"1", "L", "LA", "I", "I;16", "RGB", "RGBA"},
    "JPEG": {"L", "RGB"},
    "WEBP": {"RGB", "RGBA"},
}
JPEG_SEGMENT_BYTES = 65533  # the most a JPEG APP segment holds after its length field
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\0"

# A1111's sampler names (modules/sd_samplers_*.py) for ours.
SAMPLER_NAMES = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "lcm": "LCM",
}

MAX_TEXT_BYTES = 8 << 20  # a compressed PNG text chunk inflates to at most this much
# What damaged metadata in someone else's file raises while it is parsed.
DAMAGED = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


@functools.cache
def version() -> str:
    """fastimg's installed version (the package's own when it runs from a source tree)."""
    try:
        return importlib.metadata.version("fastimg")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


# --- the A1111 "parameters" text ---------------------------------------------------------------


def parameters_text(settings: dict, size: tuple[int, int]) -> str:
    """A1111's infotext: prompt, negative prompt, settings line (read by ComfyUI, Civitai)."""
    scheduler = str(settings["fastimg:scheduler"])
    fields = {
        "Steps": settings["fastimg:steps"],
        "Sampler": SAMPLER_NAMES.get(scheduler, scheduler),
        "CFG scale": _number(settings["fastimg:guidance"]),
        "Seed": settings["fastimg:seed"],
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": settings.get("fastimg:model_hash") or None,
        "Model": settings.get("fastimg:model") or None,
        "Denoising strength": _number(settings["fastimg:strength"]),
        "Version": f"fastimg {version()}",
    }
    line = ", ".join(f"{k}: {_quote(_text(v))}" for k, v in fields.items() if v is not None)
    negative = _text(settings.get("fastimg:negative_prompt") or "")
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{_text(settings['fastimg:prompt'])}{negative_line}\n{line}".strip()


def _number(value) -> str:
    """A number without needless trailing zeros: 7.0 -> '7', 7.5 -> '7.5', '0.50' -> '0.5'."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _quote(text: str) -> str:
    """A value as A1111's `infotext_utils.quote` writes it: JSON-quoted when it holds a comma, a
    colon or a newline (and, so that it reads back as written, a CR or a leading double quote)."""
    if any(c in text for c in ",:\n\r") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _text(value) -> str:
    """`str(value)` with lone surrogates (undecodable bytes from argv) as U+FFFD, so it encodes."""
    return re.sub("[\ud800-\udfff]", "\ufffd", str(value))


# --- XMP ---------------------------------------------------------------------------------------

XMP_TEMPLATE = """\
<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="{rdf}">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="{iptc}"
    xmlns:xmp="{xmp}"
    xmlns:fastimg="{fastimg}">
{properties}
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""

NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
ESCAPED_NAME_CHAR = re.compile("_x([0-9A-F]{4,6})_")


def xmp_packet(settings: dict) -> bytes:
    """An XMP packet: IPTC digital source type, xmp:CreatorTool and every fastimg:* setting."""
    properties = [
        ("Iptc4xmpExt:DigitalSourceType", TRAINED_ALGORITHMIC_MEDIA),
        ("xmp:CreatorTool", f"fastimg {version()}"),
        *((f"fastimg:{_xml_name(key[8:])}", value) for key, value in _fastimg_items(settings)),
    ]
    lines = "\n".join(f"   <{name}>{_xml_text(value)}</{name}>" for name, value in properties)
    packet = XMP_TEMPLATE.format(
        rdf=RDF_NS, iptc=IPTC_EXT_NS, xmp=XMP_NS, fastimg=FASTIMG_NS, properties=lines
    )
    return packet.encode("utf-8")


def _fastimg_items(settings: dict) -> list[tuple[str, object]]:
    """The `fastimg:*` settings, in their order."""
    return [(k, v) for k, v in settings.items() if isinstance(k, str) and k.startswith("fastimg:")]


def _xml_text(value) -> str:
    """`value` as XML character data: markup escaped, CR kept as a reference, characters XML
    cannot hold (controls, lone surrogates) as U+FFFD."""
    return escape(NOT_XML_CHAR.sub("\ufffd", str(value)), {"\r": "&#13;"})


def _xml_name(name: str) -> str:
    """`name` as an XML local name: other characters written `_xHHHH_` (as .NET's
    XmlConvert.EncodeName does), so that any setting's key reads back as it was."""
    out = []
    for i, c in enumerate(name):
        plain = c.isascii() and (c.isalpha() or c == "_" or (i > 0 and (c.isdigit() or c in "-.")))
        if c == "_" and ESCAPED_NAME_CHAR.match(name, i):
            plain = False  # a literal "_x0041_" would otherwise read back as "A"
        out.append(c if plain else f"_x{ord(c):04X}_")
    return "".join(out)


def _xml_key(name: str) -> str:
    """The setting key that `_xml_name` wrote as `name`."""
    return ESCAPED_NAME_CHAR.sub(lambda m: chr(int(m.group(1), 16)), name)


# --- writing -----------------------------------------------------------------------------------


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The Pillow format to write `path` in: `fmt` when given (png, jpeg, jpg, webp), else the
    suffix's; other formats are refused, since they have no place for the labels."""
    path = Path(path)
    chosen = FORMAT_NAMES.get(fmt.lower()) if fmt else OUTPUT_FORMATS.get(path.suffix.lower())
    if chosen is None:
        if fmt:
            what = f"format {fmt!r} is not one fastimg writes"
        elif path.suffix:
            what = f"{path.suffix} is not a format fastimg writes"
        else:
            what = "the name has no suffix to tell the format"
        raise InputError(
            f"cannot write {path}: {what}; write PNG (.png), JPEG (.jpg, .jpeg) or WebP (.webp), "
            "the formats that carry the labels marking outputs as AI-generated"
        )
    return chosen


def save_image(
    image: Image.Image,
    path: str | Path,
    settings: dict,
    fmt: str | None = None,
    quality: int | None = None,
    metadata: bool = True,
    signer=None,
) -> Path:
    """Write `image` atomically as PNG, JPEG or WebP (by `fmt` or the suffix) with its labels.

    `quality` (1-100) is for JPEG and WebP, 95 by default for both; PNG ignores it. With
    `metadata=False` the file carries no text chunks, EXIF or XMP, nor anything from
    `image.info`. `signer` (c2pa_signing.load_signer) adds a signed C2PA manifest (without
    the settings when `metadata=False`). A write that fails is an OutputError, and leaves no
    partial file.
    """
    path = Path(path)
    fmt = output_format(path, fmt)
    options = {}
    if fmt in DEFAULT_QUALITY:
        options["quality"] = _quality(quality, fmt)
    bare = _bare(image, fmt)
    if metadata:
        options.update(_labels(fmt, settings, bare.size, path))
    if signer is None:

        def write(f):
            bare.save(f, format=fmt, **options)

    else:  # signed in memory, so that the file is written whole, credentials and all
        from .c2pa import sign_image

        encoded = io.BytesIO()
        bare.save(encoded, format=fmt, **options)
        credentials = settings if metadata else {}
        signed = sign_image(signer, encoded.getvalue(), fmt, credentials, title=path.name)

        def write(f):
            f.write(signed)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomically(path, write)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _quality(quality: int | None, fmt: str) -> int:
    if quality is None:
        return DEFAULT_QUALITY[fmt]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(f"quality {quality!r} is not a whole number from 1 to 100")
    return quality


def _bare(image: Image.Image, fmt: str) -> Image.Image:
    """A copy of `image` in a mode `fmt` stores, with no `info` for Pillow to carry into the file
    (Pillow writes e.g. an input's ICC profile and transparency from `info`)."""
    if image.mode in STORED_MODES[fmt]:
        bare = image.copy()
    else:
        from .images import to_rgb  # here, not at the top: images may import this module

        bare = to_rgb(image)
    bare.info = {}
    return bare


def _labels(fmt: str, settings: dict, size: tuple[int, int], path: Path) -> dict:
    """Pillow save options that write the labels in `fmt`'s places."""
    text = parameters_text(settings, size)
    xmp = xmp_packet(settings)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)  # tEXt, or iTXt beyond Latin-1: as A1111 writes it
        info.add_itxt(PNG_XMP_KEY, xmp.decode("utf-8"))
        for key, value in _fastimg_items(settings):
            info.add_itxt(key, _text(value))
        return {"pnginfo": info}
    exif = _exif(text)
    if fmt == "JPEG" and max(len(exif), len(JPEG_XMP_HEADER) + len(xmp)) > JPEG_SEGMENT_BYTES:
        raise InputError(
            f"cannot write {path}: its labels (prompt and settings) are over the 64 KiB a JPEG "
            "metadata segment holds; write PNG or WebP, or shorten the prompt"
        )
    return {"exif": exif, "xmp": xmp}


def _exif(text: str) -> bytes:
    """EXIF that holds `text` in UserComment byte for byte as A1111 writes it (piexif.dump of
    UserComment.dump(text, encoding="unicode")): a big-endian TIFF block, IFD0 with Software and
    the Exif IFD's offset, the Exif IFD with UserComment typed UNDEFINED, b"UNICODE\\0" then
    UTF-16BE. Built here, not with Image.Exif: Pillow types a bytes value it has no entry for
    as BYTE, which piexif (A1111's reader) returns as a tuple of ints it cannot decode."""
    software = f"fastimg {version()}".encode("ascii", "replace") + b"\0"
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    software_at = 8 + 2 + 2 * 12 + 4  # after the header and IFD0
    exif_ifd_at = software_at + len(software) + len(software) % 2  # IFDs start on a word
    comment_at = exif_ifd_at + 2 + 12 + 4
    tiff = b"".join(
        [
            b"MM\0*" + struct.pack(">I", 8),
            struct.pack(">H", 2),
            struct.pack(">HHII", 0x0131, 2, len(software), software_at),  # Software, ASCII
            struct.pack(">HHII", 0x8769, 4, 1, exif_ifd_at),  # Exif IFD, LONG
            struct.pack(">I", 0),
            software.ljust(exif_ifd_at - software_at, b"\0"),
            struct.pack(">H", 1),
            struct.pack(">HHII", 0x9286, 7, len(comment), comment_at),  # UserComment, UNDEFINED
            struct.pack(">I", 0),
            comment,
        ]
    )
    return b"Exif\0\0" + tiff


# --- reading -----------------------------------------------------------------------------------


def read_labels(path: str | Path) -> dict:
    """What an image file carries: format, size, A1111 parameters, XMP source type and creator
    tool, fastimg settings, and whether a C2PA manifest is present."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            fmt, size, info = image.format, image.size, dict(image.info)
            exif = None if fmt == "PNG" else _getexif(image)
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image that can be read") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large to inspect: {exc}") from None
    except DAMAGED as exc:
        raise InputError(f"image {path} is damaged or cannot be read: {exc}") from None

    if fmt == "PNG":
        texts, exif_body, c2pa = _png_metadata(data)
        parameters = texts.get("parameters") or _comment(_load_exif(exif_body))
        xmp = texts.get(PNG_XMP_KEY, "").encode("utf-8") or None
        own = {k: v for k, v in texts.items() if k.startswith("fastimg:")}
    else:
        parameters = _comment(exif)
        xmp = info.get("xmp")
        own = {}
        c2pa = _has_c2pa(fmt, data)
    source, creator, from_xmp = _read_xmp(xmp)
    return {
        "format": fmt,
        "size": size,
        "parameters": parameters,
        "digital_source_type": source,
        "creator_tool": creator,
        "fastimg": {**from_xmp, **own},  # PNG's own chunks hold values XMP could not
        "c2pa": c2pa,
    }


def _png_chunks(data: bytes):
    """(type, body) of each chunk of a PNG file up to IEND; a truncated file ends the walk."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, data[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            return
        pos += 12 + length


def _png_metadata(data: bytes) -> tuple[dict[str, str], bytes | None, bool]:
    """A PNG's text chunks by key, its eXIf body, and whether it has a C2PA (caBX) chunk; read
    from the bytes so that no pixels are decoded and chunks after IDAT count too."""
    texts, exif, c2pa = {}, None, False
    for kind, body in _png_chunks(data):
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            try:
                key, value = _png_text(kind, body)
            except DAMAGED:
                continue
            texts.setdefault(key, value)
        elif kind == b"eXIf":
            exif = body
        elif kind == b"caBX":
            c2pa = True
    return texts, exif, c2pa


def _png_text(kind: bytes, body: bytes) -> tuple[str, str]:
    """Key and text of a tEXt, zTXt or iTXt chunk (PNG spec 11.3.4)."""
    key, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[0], rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    text = _inflate(text) if compressed else text
    return key.decode("latin-1"), text.decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    """zlib data inflated, refusing more than MAX_TEXT_BYTES (a zip bomb in a text chunk)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk inflates past the limit")
    return out


def _getexif(image: Image.Image) -> Image.Exif | None:
    """The image's EXIF; None when it is damaged (the rest of the file may still be read)."""
    try:
        return image.getexif()
    except DAMAGED:
        return None


def _load_exif(body: bytes | None) -> Image.Exif | None:
    if not body:
        return None
    exif = Image.Exif()
    try:
        exif.load(body)
    except DAMAGED:
        return None
    return exif


def _comment(exif: Image.Exif | None) -> str | None:
    """EXIF UserComment as text (A1111's JPEG/WebP parameters); None when there is none."""
    try:
        raw = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment) if exif else None
    except DAMAGED:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not raw:
        return None
    text = _decode_comment(raw[:8], raw[8:], exif.endian or ">")
    return text.rstrip("\0") or None


def _decode_comment(prefix: bytes, body: bytes, endian: str) -> str:
    """A UserComment's text by its character-code prefix (EXIF 2.32, table 9). UNICODE's byte
    order is not fixed by the standard: A1111 writes UTF-16BE in big-endian EXIF; a BOM, or zero
    bytes where ASCII text would have them, tell the other order."""
    if prefix == b"UNICODE\0":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace")
        zeros_first, zeros_second = body[0::2].count(0), body[1::2].count(0)
        little = zeros_second > zeros_first or (zeros_second == zeros_first and endian == "<")
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    if prefix == b"JIS\0\0\0\0\0":
        return body.decode("shift_jis", errors="replace")
    return body.decode("utf-8", errors="replace")  # ASCII, undefined, or no prefix at all


def _read_xmp(packet: bytes | str | None) -> tuple[str | None, str | None, dict[str, str]]:
    """Digital source type, creator tool and fastimg settings from an XMP packet (attributes
    or elements of any rdf:Description); a damaged packet reads as an empty one."""
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if not packet or b"<!DOCTYPE" in packet:  # XMP has no DTD; refusing one avoids entity bombs
        return None, None, {}
    try:
        root = ElementTree.fromstring(packet.strip(b"\0 \t\r\n"))
    except DAMAGED:
        return None, None, {}
    found, settings = {}, {}
    fastimg_prefix = f"{{{FASTIMG_NS}}}"
    for description in root.iter(f"{{{RDF_NS}}}Description"):
        properties = [*description.attrib.items()]
        properties += [(c.tag, c.get(f"{{{RDF_NS}}}resource", c.text or "")) for c in description]
        for tag, value in properties:
            if tag.startswith(fastimg_prefix):
                settings[f"fastimg:{_xml_key(tag[len(fastimg_prefix) :])}"] = value
            else:
                found.setdefault(tag, value)
    source = found.get(f"{{{IPTC_EXT_NS}}}DigitalSourceType")
    return source, found.get(f"{{{XMP_NS}}}CreatorTool"), settings


def _has_c2pa(fmt: str, data: bytes) -> bool:
    """Whether a JPEG or WebP file holds a C2PA manifest (PNG's is found with its chunks)."""
    if fmt == "JPEG":
        return _jpeg_has_c2pa(data)
    return fmt == "WEBP" and _webp_has_c2pa(data)


def _jpeg_has_c2pa(data: bytes) -> bool:
    """Whether a JPEG has an APP11 (JUMBF) segment holding a C2PA manifest store."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker == 0xEB and b"c2pa" in data[pos + 4 : pos + 2 + length]:
            return True
        pos += 2 + length
    return False


def _webp_has_c2pa(data: bytes) -> bool:
    """Whether a WebP (RIFF) file has a C2PA chunk."""
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        if kind == b"C2PA":
            return True
        pos += 8 + length + (length & 1)
    return False
