"""The labels' vocabulary, shared by their writer (labels), their reader (label_reader) and the
C2PA manifest (c2pa): IPTC's digital source type, the XMP namespaces, the PNG key of the XMP
packet, the fastimg:* settings and fastimg's version as the labels name it.

It imports nothing of fastimg's media, so that writer, reader and C2PA all depend on it and
none on another's internals.
"""

import functools
import importlib.metadata
import re

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
FASTIMG_NS = "urn:fastimg:settings:1.0/"
PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword PNG's XMP packet is stored under
SETTING_PREFIX = "fastimg:"  # the keys of fastimg's own settings in a labels dict
# How a setting key's character that an XML name cannot hold is written: _xHHHH_ (XmlConvert).
ESCAPED_NAME_CHAR = re.compile("_x([0-9A-F]{4,6})_")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@functools.cache
def version() -> str:
    """fastimg's installed version (the package's own when it runs from a source tree)."""
    try:
        return importlib.metadata.version("fastimg")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def fastimg_items(settings: dict) -> list[tuple[str, object]]:
    """The `fastimg:*` settings of a labels dict, in their order."""
    return [
        (k, v) for k, v in settings.items() if isinstance(k, str) and k.startswith(SETTING_PREFIX)
    ]


def encodable_text(value) -> str:
    """`str(value)` with lone surrogates (undecodable bytes from argv) as U+FFFD, so it encodes."""
    return LONE_SURROGATE.sub("\ufffd", str(value))
