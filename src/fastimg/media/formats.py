"""Image formats by name and by file suffix, each concept defined once: the formats fastimg
writes (those that carry the labels), the image formats it reads but cannot label, and the
suffixes that name one image file rather than a folder."""

# The Pillow format each written suffix is saved as; the only formats with places for the labels.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# The Pillow format for each name a caller may give (--format, the server's `format` field).
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}

# Suffixes of the files fastimg writes images as: .png, .jpg, .jpeg, .webp.
WRITTEN_SUFFIXES = tuple(OUTPUT_FORMATS)
# Suffixes of image formats fastimg reads but does not write, as they cannot carry the labels.
UNLABELLED_SUFFIXES = (".tif", ".tiff", ".bmp", ".gif", ".avif")
# Suffixes that make a name one image file (written or only read), not a folder.
IMAGE_FILE_SUFFIXES = (*WRITTEN_SUFFIXES, *UNLABELLED_SUFFIXES)
# Suffixes of the still-image formats whose content fastimg recognises (images.IMAGE_SIGNATURES:
# PNG, JPEG, WebP, BMP, TIFF, GIF); frame folders hold such files.
RECOGNISED_SUFFIXES = (*WRITTEN_SUFFIXES, ".bmp", ".tif", ".tiff", ".gif")
