"""Labels that mark an output as AI-generated, each in its format's own place, written with the
image (reading them back is label_reader's).

PNG: the A1111 `parameters` text chunk, XMP in the `XML:com.adobe.xmp` iTXt chunk, and each
`fastimg:*` setting as its own iTXt chunk. JPEG and WebP: the A1111 text in EXIF UserComment
(where A1111 puts it) and XMP. The XMP carries IPTC's digital source type (trained algorithmic
media), the creator tool and the fastimg settings.
"""

import io
import json
import re
import struct
import zlib
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin

from ..atomic import write_atomically
from ..errors import InputError, OutputError
from . import png
from .c2pa import sign_image
from .formats import FORMAT_NAMES, OUTPUT_FORMATS
from .images import to_rgb
from .vocabulary import (
    ESCAPED_NAME_CHAR,
    FASTIMG_NS,
    IPTC_EXT_NS,
    PNG_XMP_KEY,
    RDF_NS,
    TRAINED_ALGORITHMIC_MEDIA,
    XMP_NS,
    encodable_text,
    fastimg_items,
    version,
)

DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 95}
# PNGs are written by fastimg.media.png (grey, RGB, RGBA); Pillow writes the other modes, deflated
# at level 1 with run-length matching: 2-4x faster than its level 6 and as small on photographs.
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# Modes each format stores as they are; any other mode is converted to RGB (alpha onto white).
STORED_MODES = {
    "PNG": {"1", "L", "LA", "I;16", "RGB", "RGBA"},
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

# --- the A1111 "parameters" text ---------------------------------------------------------------


def parameters_text(settings: dict, size: tuple[int, int]) -> str:
    """A1111's infotext: prompt, negative prompt, settings line (read by ComfyUI, Civitai)."""
    scheduler = str(settings["fastimg:scheduler"])
    fields = {
        "Steps": settings["fastimg:steps"],
        "Sampler": SAMPLER_NAMES.get(scheduler, scheduler),
        "CFG scale": _short_number(settings["fastimg:guidance"]),
        "Seed": settings["fastimg:seed"],
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": settings.get("fastimg:model_hash") or None,
        "Model": settings.get("fastimg:model") or None,
        "Denoising strength": _short_number(settings["fastimg:strength"]),
        "Mask blur": settings.get("fastimg:mask_blur"),
        "Inpaint area": "Only masked" if "fastimg:mask_padding" in settings else None,
        "Masked area padding": settings.get("fastimg:mask_padding"),
        **_control_fields(settings),
        "Lora hashes": settings.get("fastimg:lora_hashes") or None,
        "Version": f"fastimg {version()}",
    }
    line = ", ".join(
        f"{k}: {_quote(encodable_text(v))}" for k, v in fields.items() if v is not None
    )
    negative = _prompt_text(settings.get("fastimg:negative_prompt") or "")
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    prompt = _prompt_text(settings["fastimg:prompt"]) + _lora_tags(settings)
    return f"{prompt}{negative_line}\n{line}".strip()


def _lora_tags(settings: dict) -> str:
    """The call's LoRAs as A1111 writes them into the prompt: ' <lora:NAME:SCALE>' each."""
    loras = str(settings.get("fastimg:loras") or "")
    pairs = [part.strip().rpartition(":") for part in loras.split(",") if part.strip()]
    return "".join(f" <lora:{name}:{scale}>" for name, _, scale in pairs)


def _control_fields(settings: dict) -> dict:
    """The ControlNets' settings as A1111's ControlNet extension writes them, "ControlNet 0",
    "ControlNet 1", ... (none where no ControlNet steered the image; several ControlNets'
    labels are lists, one value each)."""
    if "fastimg:control_scale" not in settings:
        return {}

    def each(key: str) -> list:
        value = settings.get(key)
        return list(value) if isinstance(value, list | tuple) else [value]

    scales = each("fastimg:control_scale")
    starts, ends = each("fastimg:control_start"), each("fastimg:control_end")
    models = each("fastimg:control_model")
    preprocessors = each("fastimg:control_preprocess")
    fields = {}
    for k, scale in enumerate(scales):
        model = re.sub(r"[,:\n]", "_", str(models[min(k, len(models) - 1)] or ""))
        start, end = starts[min(k, len(starts) - 1)], ends[min(k, len(ends) - 1)]
        preprocessor = preprocessors[min(k, len(preprocessors) - 1)] or "none"
        fields[f"ControlNet {k}"] = (
            f"preprocessor: {preprocessor}, "
            + (f"model: {model}, " if model else "")
            + f"weight: {_short_number(scale)}, "
            f"starting/ending: ({_short_number(start)}, {_short_number(end)})"
        )
    return fields


NEGATIVE_LINE = "Negative prompt:"
# Put before a prompt's line that A1111 would otherwise read as the start of the negative
# prompt: not whitespace to str.strip, so the line no longer starts with NEGATIVE_LINE there.
ZERO_WIDTH_SPACE = "\u200b"


def _prompt_text(text: str) -> str:
    """A prompt as the infotext holds it: its lines kept, except that a line A1111 would take for
    the start of the negative prompt ("Negative prompt: ...", a forged negative in every reader)
    starts with a zero-width space."""
    lines = encodable_text(text).split("\n")
    return "\n".join(
        ZERO_WIDTH_SPACE + line if line.strip().startswith(NEGATIVE_LINE) else line
        for line in lines
    )


def _short_number(value) -> str:
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


def xmp_packet(settings: dict) -> bytes:
    """An XMP packet: IPTC digital source type, xmp:CreatorTool and every fastimg:* setting."""
    properties = [
        ("Iptc4xmpExt:DigitalSourceType", TRAINED_ALGORITHMIC_MEDIA),
        ("xmp:CreatorTool", f"fastimg {version()}"),
        *((f"fastimg:{_xml_name(key[8:])}", value) for key, value in fastimg_items(settings)),
    ]
    lines = "\n".join(f"   <{name}>{_xml_text(value)}</{name}>" for name, value in properties)
    packet = XMP_TEMPLATE.format(
        rdf=RDF_NS, iptc=IPTC_EXT_NS, xmp=XMP_NS, fastimg=FASTIMG_NS, properties=lines
    )
    return packet.encode("utf-8")


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
    text: dict[str, str] | None = None,
) -> Path:
    """Write `image` atomically as PNG, JPEG or WebP (by `fmt` or the suffix) with its labels.

    `quality` (1-100) is for JPEG and WebP, 95 by default for both; PNG ignores it. With
    `metadata=False` the file carries no text chunks, EXIF or XMP, nor anything from
    `image.info`. `signer` (c2pa.load_signer) adds a signed C2PA manifest (without
    the settings when `metadata=False`). `text`: more PNG text chunks, written as given after
    the labels (ComfyUI's prompt and workflow). A write that fails is an OutputError, and
    leaves no partial file.
    """
    path = Path(path)
    fmt = output_format(path, fmt)
    bare, options = _encoding(image, settings, fmt, quality, metadata, path)
    if text and metadata and fmt == "PNG":
        for key, value in text.items():
            options["pnginfo"].add_text(key, value)
    if signer is None:

        def write(f):
            _encode_into(f, bare, fmt, options)

    else:  # signed in memory, so that the file is written whole, credentials and all
        credentials = settings if metadata else {}
        signed = _signed(bare, fmt, options, signer, credentials, title=path.name)

        def write(f):
            f.write(signed)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomically(path, write)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def encode_image(
    image: Image.Image,
    settings: dict,
    fmt: str | None = None,
    quality: int | None = None,
    metadata: bool = True,
    signer=None,
    name: str | None = None,
) -> bytes:
    """The bytes save_image would write for `image` to a file called `name`, labels and all.

    The format is `fmt` (png, jpeg, jpg, webp), else `name`'s suffix; `quality`, `metadata`
    and `signer` are save_image's. `name` is the C2PA manifest's title when signing (by
    default image.png, image.jpg or image.webp) and what messages call the image.
    """
    where = name or "the image"
    fmt = output_format(where, fmt)
    bare, options = _encoding(image, settings, fmt, quality, metadata, where)
    if signer is not None:
        return _signed(bare, fmt, options, signer, settings if metadata else {}, title=name)
    encoded = io.BytesIO()
    _encode_into(encoded, bare, fmt, options)
    return encoded.getvalue()


def _encoding(image, settings: dict, fmt: str, quality, metadata: bool, where) -> tuple:
    """(the image as `fmt` stores it, Pillow's save options with the labels): what save_image
    and encode_image both write; `where` names the output in messages."""
    options = {}
    if fmt in DEFAULT_QUALITY:
        options["quality"] = _checked_quality(quality, fmt)
    if fmt == "PNG":
        options.update(PNG_OPTIONS)
    bare = _storable_copy(image, fmt)
    if metadata:
        options.update(_label_options(fmt, settings, bare.size, where))
    return bare, options


def _encode_into(f, bare, fmt: str, options: dict) -> None:
    """`bare` encoded as `fmt` with Pillow's save `options` into the file object `f`: PNG by
    fastimg.media.png where it takes the mode (several times faster than Pillow's encoder)."""
    if fmt == "PNG" and png.takes(bare):
        f.write(png.encode(bare, options.get("pnginfo")))
    else:
        bare.save(f, format=fmt, **options)


def _signed(bare, fmt: str, options: dict, signer, credentials: dict, title) -> bytes:
    """The encoded file with a C2PA manifest signed by `signer` (its settings: `credentials`)."""
    encoded = io.BytesIO()
    _encode_into(encoded, bare, fmt, options)
    return sign_image(signer, encoded.getvalue(), fmt, credentials, title=title)


def _checked_quality(quality: int | None, fmt: str) -> int:
    if quality is None:
        return DEFAULT_QUALITY[fmt]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(f"quality {quality!r} is not a whole number from 1 to 100")
    return quality


def _storable_copy(image: Image.Image, fmt: str) -> Image.Image:
    """A copy of `image` in a mode `fmt` stores, with no `info` for Pillow to carry into the file
    (Pillow writes e.g. an input's ICC profile and transparency from `info`)."""
    if image.mode in STORED_MODES[fmt]:
        bare = image.copy()
    elif fmt == "PNG" and image.mode == "I":  # (32-bit: what older Pillows opened 16-bit files as)
        bare = image.convert("I;16")  # PNG's deepest grey, 0-65535 kept, the rest clipped
    else:
        bare = to_rgb(image)
    bare.info = {}
    return bare


def _label_options(fmt: str, settings: dict, size: tuple[int, int], where) -> dict:
    """Pillow save options that write the labels in `fmt`'s places."""
    text = parameters_text(settings, size)
    xmp = xmp_packet(settings)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)  # tEXt, or iTXt beyond Latin-1: as A1111 writes it
        info.add_itxt(PNG_XMP_KEY, xmp.decode("utf-8"))
        for key, value in fastimg_items(settings):
            info.add_itxt(key, encodable_text(value))
        return {"pnginfo": info}
    exif = _user_comment_exif(text)
    if fmt == "JPEG" and max(len(exif), len(JPEG_XMP_HEADER) + len(xmp)) > JPEG_SEGMENT_BYTES:
        raise InputError(
            f"cannot write {where}: its labels (prompt and settings) are over the 64 KiB a JPEG "
            "metadata segment holds; write PNG or WebP, or shorten the prompt"
        )
    return {"exif": exif, "xmp": xmp}


def _user_comment_exif(text: str) -> bytes:
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
