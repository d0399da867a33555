"""The suffix sets, each defined once in media.formats, hold what each use held before."""

from fastimg.media import formats


def test_each_suffix_set_holds_what_its_use_needs():
    # what outputs are written as (formats that carry the labels)
    assert formats.WRITTEN_SUFFIXES == (".png", ".jpg", ".jpeg", ".webp")
    assert set(formats.WRITTEN_SUFFIXES) == set(formats.OUTPUT_FORMATS)
    # image formats read but refused as outputs, since they cannot carry the labels
    assert formats.UNLABELLED_SUFFIXES == (".tif", ".tiff", ".bmp", ".gif", ".avif")
    # a name with one of these is one image file (-o of fastimg transform), not a folder
    assert set(formats.IMAGE_FILE_SUFFIXES) == {
        ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".avif"
    }  # fmt: skip
    # still images whose content fastimg recognises: a video OUT named so is refused
    assert set(formats.RECOGNISED_SUFFIXES) == {
        ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"
    }  # fmt: skip


def test_written_formats_are_named_alike_by_suffix_and_by_name():
    assert set(formats.OUTPUT_FORMATS.values()) == set(formats.FORMAT_NAMES.values())
