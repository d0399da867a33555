"""Reading the labels back: what an image file carries (A1111 parameters, XMP source type and
creator tool, fastimg settings, whether a C2PA manifest is present), from the file's bytes so
that no pixels are decoded. Works on any image, not only fastimg's outputs."""

import io
import struct
import zlib
from pathlib import Path
from xml.etree import ElementTree

from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import InputError
from .vocabulary import ESCAPED_NAME_CHAR, FASTIMG_NS, IPTC_EXT_NS, PNG_XMP_KEY, RDF_NS, XMP_NS

MAX_TEXT_BYTES = 8 << 20  # a compressed PNG text chunk inflates to at most this much
# What damaged metadata in someone else's file raises while it is parsed.
DAMAGED = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


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
            exif = None if fmt == "PNG" else _exif_or_none(image)
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image that can be read") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large to inspect: {exc}") from None
    except DAMAGED as exc:
        raise InputError(f"image {path} is damaged or cannot be read: {exc}") from None

    if fmt == "PNG":
        texts, exif_body, c2pa = _png_metadata(data)
        parameters = texts.get("parameters") or _user_comment(_exif_from_body(exif_body))
        xmp = texts.get(PNG_XMP_KEY, "").encode("utf-8") or None
        own = {k: v for k, v in texts.items() if k.startswith("fastimg:")}
    else:
        parameters = _user_comment(exif)
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


def _exif_or_none(image: Image.Image) -> Image.Exif | None:
    """The image's EXIF; None when it is damaged (the rest of the file may still be read)."""
    try:
        return image.getexif()
    except DAMAGED:
        return None


def _exif_from_body(body: bytes | None) -> Image.Exif | None:
    if not body:
        return None
    exif = Image.Exif()
    try:
        exif.load(body)
    except DAMAGED:
        return None
    return exif


def _user_comment(exif: Image.Exif | None) -> str | None:
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


def _xml_key(name: str) -> str:
    """The setting key that the writer (labels._xml_name) wrote as the XML name `name`."""
    return ESCAPED_NAME_CHAR.sub(lambda m: chr(int(m.group(1), 16)), name)
